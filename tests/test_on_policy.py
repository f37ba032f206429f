"""Generated-sequence distillation (`on_policy.py`): on-policy GKD and sequence-level KD.

Tiny random Llamas (a 64-token vocabulary for the step-level proofs; SmolLM2's vocabulary
through `text_lm` for the runs). Every claim is checked against an independent path: the
generated tokens against `llama.generate` called directly with the documented key, the
teacher's logits against its own forward, the on-policy step against the plain online
step on the generated batch, a corpus step against the plain online step bitwise.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_news_lm import TINY, lm_config, text_dir  # noqa: F401 (fixture)

from distill_jax.config import load_config
from distill_jax.errors import ConfigError
from distill_jax.models import create_model
from distill_jax.models.llama import Llama, generate
from distill_jax.objective import Objective
from distill_jax.on_policy import OnPolicyTeacher, continue_prompts, teacher_continuations
from distill_jax.tasks import CausalLM
from distill_jax.teachers import OnlineTeacher, StudentPolicy, Teacher
from distill_jax.train import loop
from distill_jax.train.state import create_train_state
from distill_jax.train.steps import frozen_inputs, make_train_step
from distill_jax.train.teacher_cache import fingerprint

V, T, B, P = 64, 24, 4, 10
TEACHER = Llama(
    vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
    intermediate_size=64, max_position=64,
)  # fmt: skip
STUDENT = Llama(
    vocab_size=V, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
    intermediate_size=32, max_position=64,
)  # fmt: skip
GKD = {"lm_jsd": {"weight": 1.0, "beta": 0.5}}


@pytest.fixture(scope="module")
def parts():
    """Corpus rows (label -1 on the first token, as a packed row's padding would be), the
    teacher, a GKD objective and a fresh student state."""
    ids = np.random.default_rng(0).integers(1, V, (B, T)).astype(np.int32)
    labels = ids.copy()
    labels[:, 0] = -1
    variables = TEACHER.init(jax.random.PRNGKey(1), jnp.asarray(ids))
    teacher = Teacher(TEACHER, variables, {})
    objective = Objective(
        {"alpha": 0.0, "temperature": 1.0, "losses": GKD}, task=CausalLM(chunk_size=None)
    )
    tx = optax.adam(1e-2)
    state = create_train_state(STUDENT, tx, (T,), seed=0)
    batch = {"image": ids, "label": labels, "index": np.arange(B, dtype=np.int32)}
    parts = dict(teacher=teacher, objective=objective, tx=tx, state=state, batch=batch)
    parts["online"] = compile_step(parts, OnlineTeacher(teacher))  # compiled once
    return parts


def compile_step(parts, source):
    return jax.jit(make_train_step(STUDENT, parts["tx"], parts["objective"], teacher=source))


def one_step(parts, source, state=None, batch=None, on_policy=None):
    """One step's `(state, metrics)`; a generating source's `on_policy` metric is checked
    against `on_policy` (0 / 1) and taken out, so the rest compares with the online step."""
    step = parts["online"] if source == "online" else compile_step(parts, source)
    state = parts["state"] if state is None else state
    batch = parts["batch"] if batch is None else batch
    new_state, metrics = step(state, frozen_inputs(parts["teacher"].variables), batch)
    if source != "online":
        metrics = dict(metrics)
        assert float(metrics.pop("on_policy")) == on_policy
    return new_state, metrics


def step_key(state):
    """The documented key of a generating source at this state's step."""
    return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 4)


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_lmbda_zero_and_a_corpus_draw_are_the_online_step_exactly(parts):
    online = one_step(parts, "online")
    assert_trees_equal(
        one_step(parts, OnPolicyTeacher(parts["teacher"], 0.0, P), on_policy=0), online
    )
    # lmbda in (0, 1) compiles both branches under lax.cond; at a step whose draw is
    # "corpus" the update is still the online one, bit for bit.
    source = OnPolicyTeacher(parts["teacher"], 0.5, P)
    state = parts["state"]
    for s in range(64):
        state = state.replace(step=jnp.asarray(s, state.step.dtype))
        if not bool(source.on_student(step_key(state))):
            break
    online = one_step(parts, "online", state=state)
    assert_trees_equal(one_step(parts, source, state=state, on_policy=0), online)


def test_lmbda_one_trains_on_the_students_samples_scored_by_the_teacher(parts):
    teacher, state, batch = parts["teacher"], parts["state"], parts["batch"]
    source = OnPolicyTeacher(teacher, 1.0, P, temperature=1.0)
    key = step_key(state)
    call = lambda frozen, ids, labels, params: source(  # noqa: E731
        frozen, ids, batch["index"], state.step, labels=labels,
        student=StudentPolicy(STUDENT, params, key),
    )  # fmt: skip
    ids, out = jax.jit(call)(teacher.variables, batch["image"], batch["label"], state.params)
    want_new, lengths = generate(
        STUDENT,
        state.params,
        batch["image"][:, :P],
        np.ones((B, P), np.int32),
        max_new_tokens=T - P,
        eos_id=-1,
        temperature=1.0,
        key=jax.random.fold_in(key, 1),
    )
    ids, labels = np.asarray(ids), np.asarray(out["label"])
    np.testing.assert_array_equal(ids[:, :P], batch["image"][:, :P])  # the prompt
    np.testing.assert_array_equal(ids[:, P:], want_new)  # the student's samples
    assert np.all(np.asarray(lengths) == T - P)
    assert not np.array_equal(ids[:, P:], batch["image"][:, P:])
    np.testing.assert_array_equal(labels[:, :P], -1)
    np.testing.assert_array_equal(labels[:, P:], want_new)
    # The divergence's mask: zero over the prompt, one where a generated token is predicted.
    mask = np.asarray(CausalLM().term_mask(jnp.asarray(labels), None))
    want_mask = np.zeros((B, T), bool)
    want_mask[:, P - 1 : T - 1] = True
    np.testing.assert_array_equal(mask, want_mask)
    teacher_logits = jax.jit(TEACHER.apply)(teacher.variables, jnp.asarray(ids))[0]
    np.testing.assert_allclose(out["logits"], teacher_logits, rtol=1e-6, atol=1e-6)
    # The step trains on exactly that batch: equal to the online step fed it directly.
    generated = {**batch, "image": ids, "label": labels}
    online = one_step(parts, "online", batch=generated)
    new_state, metrics = one_step(parts, source, on_policy=1)
    assert_trees_equal((new_state, metrics), online)
    assert np.isfinite(float(metrics["lm_jsd"])) and float(metrics["grad_norm"]) > 0


def test_the_draw_is_a_function_of_the_step_and_resumes(parts):
    source = OnPolicyTeacher(parts["teacher"], 0.3, P)
    rng = parts["state"].rng

    @jax.jit
    def draws(rng):
        key = lambda s: jax.random.fold_in(jax.random.fold_in(rng, s), 4)  # noqa: E731
        return jax.vmap(lambda s: source.on_student(key(s)))(jnp.arange(200))

    first = draws(rng)
    np.testing.assert_array_equal(first, draws(rng))
    assert 0.2 < first.mean() < 0.4  # lmbda = 0.3 of the steps
    assert not np.array_equal(first, draws(jax.random.PRNGKey(7)))  # another seed
    # Three steps straight equal two steps, a round trip through the host (a checkpoint)
    # and the third: the state alone decides the draws and the samples.
    step = compile_step(parts, source)
    frozen = frozen_inputs(parts["teacher"].variables)
    straight = parts["state"]
    for _ in range(3):
        straight, _ = step(straight, frozen, parts["batch"])
    resumed = parts["state"]
    for _ in range(2):
        resumed, _ = step(resumed, frozen, parts["batch"])
    resumed = jax.tree.map(jnp.asarray, jax.device_get(resumed))
    resumed, _ = step(resumed, frozen, parts["batch"])
    assert_trees_equal(resumed, straight)


def test_generation_stops_at_eos_and_masks_what_follows(parts):
    teacher, batch = parts["teacher"], parts["batch"]
    greedy, _ = teacher_continuations(teacher, batch["image"], P)
    eos = int(greedy[0, P + 2])  # row 0's third greedy token ends it
    ids, labels = continue_prompts(
        TEACHER,
        teacher.variables["params"],
        jnp.asarray(batch["image"]),
        P,
        jax.random.PRNGKey(0),
        temperature=0.0,
        eos_id=eos,
    )
    ids, labels = np.asarray(ids), np.asarray(labels)
    first = P + int(np.argmax(np.asarray(greedy[0, P:]) == eos))  # its first EOS
    np.testing.assert_array_equal(labels[0, P : first + 1], greedy[0, P : first + 1])
    np.testing.assert_array_equal(labels[0, first + 1 :], -1)
    np.testing.assert_array_equal(ids[0, first + 1 :], 0)


def test_seq_kd_trains_on_the_teachers_greedy_generations(parts):
    teacher, batch = parts["teacher"], parts["batch"]
    ids, labels = teacher_continuations(teacher, batch["image"], P)  # greedy
    want, _ = generate(
        TEACHER,
        teacher.variables["params"],
        batch["image"][:, :P],
        np.ones((B, P), np.int32),
        max_new_tokens=T - P,
        eos_id=-1,
        temperature=0.0,
    )
    np.testing.assert_array_equal(np.asarray(ids)[:, P:], want)
    np.testing.assert_array_equal(np.asarray(labels)[:, :P], -1)
    # A seq-KD step (lmbda 0) is the online step on those sequences.
    source = OnPolicyTeacher(teacher, 0.0, P, temperature=0.0, seq_kd=True)
    generated = {**batch, "image": np.asarray(ids), "label": np.asarray(labels)}
    online = one_step(parts, "online", batch=generated)
    assert_trees_equal(one_step(parts, source, on_policy=0), online)


def pretend_teacher(config) -> Teacher:
    """A tiny random Llama over the data's vocabulary, as `pretrained_teacher` builds one."""
    model = create_model(TINY, 49152)
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32), jnp.int32))
    identity = {
        "workdir": None,
        "pretrained": "random",
        "step": 0,
        "model": TINY,
        "num_classes": 49152,
        "image_shape": [32],
        "dataset": None,
        "sha256": fingerprint(variables),
    }
    return Teacher(model, variables, identity)


@pytest.mark.parametrize(
    "regime, extra",
    [
        ("gkd", {"distill.on_policy.lmbda": 0.5, "distill.alpha": 0.0}),
        (
            "seq_kd",
            {"distill.on_policy.seq_kd": True, "distill.on_policy.temperature": 0.0}
            | {"distill.alpha": 1.0, "distill.losses": {}},
        ),
    ],
)
def test_fit_runs_on_generated_sequences(text_dir, data_dir, tmp_path, regime, extra):  # noqa: F811
    config = lm_config(
        text_dir,
        data_dir,
        **{
            "data.train_split": "train[:24]",
            "student.train.batch_size": 8,
            "log.tensorboard": False,
            "distill.losses": {"lm_jsd": {"weight": 1.0, "beta": 0.5}},
            "distill.on_policy.prompt_tokens": 16,
            **extra,
        },
    )
    run = loop.setup(
        config, str(tmp_path / regime), role="student", teacher=pretend_teacher(config)
    )
    assert isinstance(run.teacher, OnPolicyTeacher)
    draws = [bool(run.teacher.on_student(step_key(run.state.replace(step=s)))) for s in range(3)]
    if regime == "gkd":  # at least one of the 3 steps draws the student's samples
        assert any(draws)
    start = jax.device_get(run.state.params)
    result = loop.train(run)
    assert result.steps == 3
    metrics = [json.loads(line) for line in open(tmp_path / regime / "metrics.jsonl")]
    train = [m for m in metrics if m.get("split") == "train"]
    assert train and all(np.isfinite(m["loss"]) for m in train)
    # The logged fraction of steps on the student's samples: the draws of the 3 steps.
    want = np.mean(draws) if regime == "gkd" else 0.0
    logged = [m["on_policy"] for m in train]
    assert logged[-1] == pytest.approx(want), (logged, draws)
    moved = jax.tree.map(
        lambda a, b: np.abs(np.asarray(a) - b).max(), result.variables["params"], start
    )
    assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"distill.on_policy.lmbda": 1.5}, r"distill.on_policy.lmbda must be in \[0, 1\], got 1.5"),
        ({"distill.on_policy.lmbda": -0.1}, r"distill.on_policy.lmbda must be in \[0, 1\]"),
        ({"distill.on_policy.top_p": 0.0}, r"distill.on_policy.top_p must be in \(0, 1\]"),
        ({"distill.on_policy.temperature": -1.0}, "distill.on_policy.temperature must be >= 0"),
    ],
)
def test_bad_sections_are_refused_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"{k}={v!r}" for k, v in overrides.items()])


def test_runs_that_cannot_generate_are_refused_before_anything_is_written(
    text_dir,  # noqa: F811
    data_dir,
    tmp_path,
    tiny_config,
):
    def refused(config, message, **kwargs):
        workdir = tmp_path / "w"
        with pytest.raises(ConfigError, match=message) as info:
            loop.setup(config, str(workdir), **kwargs)
        assert "\n" not in str(info.value)
        assert not workdir.exists()

    on = {"distill.on_policy.lmbda": 0.5}
    config = lm_config(text_dir, data_dir, **on, **{"distill.on_policy.prompt_tokens": 32})
    teacher = pretend_teacher(config)
    refused(config, "prompt_tokens = 32 leaves nothing to generate in sequences of 32 tokens",
            role="student", teacher=teacher)  # fmt: skip
    config = lm_config(text_dir, data_dir, **on)
    refused(config, "needs a teacher to score the generated sequences", role="teacher")
    config = lm_config(text_dir, data_dir, **on, **{"vmap.students": 2})
    refused(config, "samples from the one student it trains", role="student", teacher=teacher)
    refused(tiny_config(**on), "dataset 'digits' is not language-model data", role="student")
