"""Teacher sharding (`parallel.shard_teacher`): the teacher's arrays split FSDP-style over
the 8 fake CPU devices give the replicated step's numbers, while each device holds ~1/8.

The placement rule (`parallel.teacher_spec`), the sharded train step of MLP, CNN (with
BatchNorm statistics) and Llama teachers against the replicated one, a few steps of `fit`
with the config key on and off, the teacher forward under sharding, and the refusals.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_overrides
from jax.sharding import PartitionSpec

from distill_jax import parallel
from distill_jax.config import load_config
from distill_jax.errors import ConfigError
from distill_jax.models import create_model
from distill_jax.models.llama import Llama
from distill_jax.objective import Objective
from distill_jax.parallel import (
    Strategy,
    bytes_per_device,
    make_strategy,
    teacher_spec,
    tree_bytes,
)
from distill_jax.tasks import CausalLM, Classification
from distill_jax.teachers import CachedTeacher, OnlineTeacher, Teacher
from distill_jax.train import loop
from distill_jax.train.optim import make_optimizer
from distill_jax.train.state import create_train_state
from distill_jax.train.steps import frozen_inputs, make_train_step

IMAGE_SHAPE = (8, 8, 1)
TEACHERS = {
    # (64, 256) and (256, 256) kernels are sharded; the (256, 10) head and biases are not.
    "mlp": {"name": "mlp", "hidden": [256, 256]},
    # A (3, 3, 32, 64) conv kernel and a (256, 256) dense kernel are sharded; BatchNorm
    # statistics (batch_stats) are small and stay replicated.
    "cnn_batchnorm": {"name": "cnn", "widths": [32, 64], "dense": 256, "batch_norm": True},
}
# A tiny SmolLM2-shaped decoder: GQA (4 query / 2 key-value heads), tied embedding.
TINY_LLAMA = dict(
    vocab_size=256,
    hidden_size=64,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=256,
    max_position=64,
)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_trees_close(got, want, rtol=1e-5, atol=1e-6, what=""):
    diffs = []
    for a, b in zip(_leaves(got), _leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)
        if a.size:
            diffs.append(float(np.max(np.abs(a.astype(np.float64) - b))))
    return max(diffs, default=0.0)


def _fully_replicated(tree) -> bool:
    return all(x.sharding.is_fully_replicated for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------- rule


def test_the_placement_rule():
    n, axis = 8, parallel.AXIS
    assert teacher_spec((64, 256), n) == PartitionSpec(None, axis)  # the largest divisible
    assert teacher_spec((256, 256), n) == PartitionSpec(axis)  # ties: the first
    assert teacher_spec((49152, 576), n) == PartitionSpec(axis)  # an embedding: its rows
    assert teacher_spec((3, 3, 32, 64), n) == PartitionSpec(None, None, None, axis)
    assert teacher_spec((4100, 16), n) == PartitionSpec(None, axis)  # 4100 % 8 != 0
    assert teacher_spec((4099, 4101), n) == PartitionSpec()  # nothing divisible
    assert teacher_spec((256, 10), n) == PartitionSpec()  # too small (2560 < 2**14)
    assert teacher_spec((256,), n) == PartitionSpec()  # a bias
    assert teacher_spec((), n) == PartitionSpec()  # a scalar
    assert teacher_spec((256, 256), 1) == PartitionSpec()  # one device
    assert teacher_spec((256, 10), n, min_size=1) == PartitionSpec(axis)


# ---------------------------------------------------------------------------- the step


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8),
        "label": rng.integers(0, 10, n).astype(np.int32),
        "index": rng.permutation(1000)[:n].astype(np.int32),
    }


def _image_run(strategy: Strategy, teacher_cfg, steps=3):
    """`steps` KD steps of an MLP student distilled from `teacher_cfg` (random weights).
    Returns (metrics per step, final state, the placed teacher, the compiled step)."""
    student = create_model({"name": "mlp", "hidden": [16]}, 10)
    teacher = create_model(teacher_cfg, 10)
    teacher_vars = teacher.init(jax.random.PRNGKey(1), jnp.zeros((1, *IMAGE_SHAPE)))
    train = {
        "optimizer": "adamw",
        "learning_rate": 1e-2,
        "weight_decay": 1e-4,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "epochs": 1,
        "batch_size": 32,
        "grad_clip": 0.0,
    }
    tx, _ = make_optimizer(train, steps_per_epoch=10)
    objective = Objective(
        {"alpha": 0.3, "temperature": 4.0, "losses": {}}, task=Classification(translate=1)
    )
    step = make_train_step(
        student, tx, objective, teacher=OnlineTeacher(Teacher(teacher, teacher_vars, {}))
    )
    compiled = strategy.compile_step(step)
    state = strategy.put_replicated(create_train_state(student, tx, IMAGE_SHAPE, seed=0))
    placed = strategy.put_teacher(teacher_vars)
    frozen = frozen_inputs(placed)
    history = []
    for i in range(steps):
        state, metrics = compiled(state, frozen, strategy.put_batch(_batch(seed=i)))
        history.append(jax.device_get(metrics))
    return history, state, placed, compiled


@pytest.mark.parametrize("teacher", list(TEACHERS))
def test_sharded_teacher_step_equals_replicated(teacher):
    assert jax.device_count() == 8, "conftest should provide 8 fake CPU devices"
    cfg = TEACHERS[teacher]
    ref_hist, ref_state, ref_teacher, _ = _image_run(make_strategy("jit"), cfg)
    strategy = make_strategy("jit", shard_teacher=True)
    hist, state, placed, compiled = _image_run(strategy, cfg)
    for got, want in zip(hist, ref_hist, strict=True):
        _assert_trees_close(got, want, what=f"{teacher} metrics")
    diff = _assert_trees_close(state.params, ref_state.params, what=f"{teacher} params")
    print(f"{teacher}: max |sharded - replicated| student param = {diff:.3g}")
    # The teacher is split: its largest kernel is 1/8 per device, and the devices hold
    # far less than a full copy each.
    assert not _fully_replicated(placed) and _fully_replicated(ref_teacher)
    kernels = [x for x in jax.tree.leaves(placed) if x.size >= parallel.SHARD_MIN_SIZE]
    assert kernels
    for x in kernels:
        blocks = {s.data.shape for s in x.addressable_shards}
        assert len(x.addressable_shards) == 8 and len(blocks) == 1
        (block,) = blocks
        assert np.prod(block) * 8 == x.size, (x.shape, block)
    sharded = max(bytes_per_device(placed).values())
    replicated = max(bytes_per_device(ref_teacher).values())
    assert replicated == tree_bytes(ref_teacher)
    print(f"{teacher}: teacher bytes per device: sharded {sharded}, replicated {replicated}")
    assert sharded < 0.2 * replicated
    # The new state stays replicated, so the step never recompiles for a new layout.
    assert _fully_replicated(state)
    assert compiled._cache_size() == 1


def test_a_sharded_teacher_cache_gives_the_replicated_step():
    """A cache's `(N, views, K)` logits are frozen teacher arrays too: rows split over
    the devices, gathered by the batch's indices inside the step."""
    student = create_model({"name": "mlp", "hidden": [16]}, 10)
    values = np.random.default_rng(5).normal(size=(1024, 2, 10)).astype(np.float32)
    source = CachedTeacher(values, None, seed=0, views=2, steps_per_epoch=1)
    objective = Objective(
        {"alpha": 0.3, "temperature": 4.0, "losses": {}}, task=Classification(translate=1)
    )
    tx = optax.sgd(0.1)
    step = make_train_step(student, tx, objective, teacher=source, data_seed=0)
    out = {}
    for shard in (False, True):
        strategy = make_strategy("jit", shard_teacher=shard)
        strategy.shard_min_size = 1024
        compiled = strategy.compile_step(step)
        state = strategy.put_replicated(create_train_state(student, tx, IMAGE_SHAPE, seed=0))
        frozen = frozen_inputs(strategy.put_teacher(source.arrays()))
        assert frozen["teacher"]["values"].sharding.is_fully_replicated is not shard
        for i in range(3):
            state, metrics = compiled(state, frozen, strategy.put_batch(_batch(seed=i)))
        out[shard] = (jax.device_get(metrics), state.params)
    _assert_trees_close(out[True], out[False], what="cached")


def test_sharded_teacher_is_never_donated():
    strategy = make_strategy("jit", shard_teacher=True)
    _, _, placed, _ = _image_run(strategy, TEACHERS["mlp"], steps=2)
    assert not any(x.is_deleted() for x in jax.tree.leaves(placed))


# -------------------------------------------------------------------- a Llama teacher


def _tokens(b=8, t=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, TINY_LLAMA["vocab_size"], (b, t)).astype(np.int32)
    loss_mask = np.ones((b, t), bool)
    loss_mask[0, :5] = False  # a prompt
    labels = np.asarray(CausalLM.labels_from(tokens, loss_mask))
    return {"image": tokens, "label": labels, "index": np.arange(b, dtype=np.int32)}


def _llama_teacher():
    model = Llama(num_layers=2, **TINY_LLAMA)
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 16), jnp.int32))
    return model, variables


def test_llama_teacher_forward_under_sharding_equals_replicated():
    model, variables = _llama_teacher()
    strategy = make_strategy("jit", shard_teacher=True)
    strategy.shard_min_size = 1024  # shard the attention kernels of this tiny model too
    placed = strategy.put_teacher(variables)
    params = placed["params"]
    assert params["embed"]["embedding"].sharding.spec == PartitionSpec(parallel.AXIS)
    assert params["layer_0"]["gate"]["kernel"].sharding.spec == PartitionSpec(None, parallel.AXIS)
    assert params["final_norm"]["scale"].sharding.is_fully_replicated
    batch = strategy.put_batch(_tokens())
    forward = jax.jit(lambda v, x: model.apply(v, x)[0])
    got = forward(placed, batch["image"])
    want = forward(make_strategy("jit").put_teacher(variables), batch["image"])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def _lm_run(strategy: Strategy, steps=2):
    teacher, teacher_vars = _llama_teacher()
    student = Llama(num_layers=1, **TINY_LLAMA)
    objective = Objective(
        {"alpha": 0.5, "temperature": 1.0, "losses": {"lm_kl": {"weight": 1.0}}},
        task=CausalLM(chunk_size=64),
    )
    tx = optax.adamw(1e-3)
    step = make_train_step(
        student, tx, objective, teacher=OnlineTeacher(Teacher(teacher, teacher_vars, {}))
    )
    compiled = strategy.compile_step(step)
    state = strategy.put_replicated(create_train_state(student, tx, (16,), seed=0))
    frozen = frozen_inputs(strategy.put_teacher(teacher_vars))
    history = []
    for i in range(steps):
        state, metrics = compiled(state, frozen, strategy.put_batch(_tokens(seed=i)))
        history.append(jax.device_get(metrics))
    return history, state, frozen["teacher"]


def test_llama_distillation_step_with_a_sharded_teacher_equals_replicated():
    ref_hist, ref_state, _ = _lm_run(make_strategy("jit"))
    strategy = make_strategy("jit", shard_teacher=True)
    strategy.shard_min_size = 1024
    hist, state, placed = _lm_run(strategy)
    assert np.isfinite(hist[0]["lm_kl"]) and hist[0]["lm_kl"] > 0
    for got, want in zip(hist, ref_hist, strict=True):
        _assert_trees_close(got, want, rtol=1e-5, atol=1e-5, what="lm metrics")
    diff = _assert_trees_close(state.params, ref_state.params, rtol=1e-5, atol=1e-5)
    print(f"llama: max |sharded - replicated| student param = {diff:.3g}")
    assert max(bytes_per_device(placed).values()) < 0.25 * tree_bytes(placed)


# ------------------------------------------------------------------ the config and fit


def test_config_key_and_refusals(data_dir):
    def config(**extra):
        return load_config(None, tiny_overrides(data_dir, **extra))

    assert config().parallel.shard_teacher is False
    assert config(**{"parallel.shard_teacher": "auto"}).parallel.shard_teacher == "auto"
    with pytest.raises(ConfigError, match="parallel.shard_teacher = 'yes' is not valid"):
        config(**{"parallel.shard_teacher": "yes"})
    with pytest.raises(ConfigError, match="needs parallel.strategy 'jit'"):
        config(**{"parallel.shard_teacher": True, "parallel.strategy": "pmap"})
    with pytest.raises(ConfigError, match="needs parallel.strategy 'jit'"):
        make_strategy("pmap", shard_teacher=True)
    # "auto" with pmap is allowed and stays replicated (pmap's own layout).
    tree = {"w": np.zeros((256, 256), np.float32)}
    assert not make_strategy("pmap", shard_teacher="auto").shards_teacher(tree)


def test_auto_shards_only_a_large_teacher(monkeypatch):
    tree = {"w": np.ones((256, 256), np.float32), "b": np.ones((256,), np.float32)}
    strategy = make_strategy("jit", shard_teacher="auto")
    assert not strategy.shards_teacher(tree)  # 257 KiB: replicated
    assert _fully_replicated(strategy.put_teacher(tree))
    monkeypatch.setattr(parallel, "AUTO_SHARD_BYTES", tree_bytes(tree))
    placed = strategy.put_teacher(tree)
    assert placed["w"].sharding.spec == PartitionSpec(parallel.AXIS)
    assert placed["b"].sharding.is_fully_replicated
    assert not make_strategy("jit", jax.devices()[:1], shard_teacher=True).shards_teacher(tree)


def test_fit_with_a_sharded_teacher_equals_replicated(data_dir, tmp_path, monkeypatch):
    overrides = {"teacher.model": TEACHERS["mlp"], "teacher.train.epochs": 1}
    loop.fit(load_config(None, tiny_overrides(data_dir, **overrides)), str(tmp_path / "t"))
    teacher = loop.load_teacher(str(tmp_path / "t"))
    placed = []
    put_teacher = Strategy.put_teacher

    def spy(self, tree):
        out = put_teacher(self, tree)
        placed.append(_fully_replicated(out))
        return out

    monkeypatch.setattr(Strategy, "put_teacher", spy)
    results = {}
    for shard in (False, True):
        extra = {**overrides, "parallel.shard_teacher": shard}
        config = load_config(None, tiny_overrides(data_dir, **extra))
        results[shard] = loop.fit(
            config, str(tmp_path / f"s{shard}"), role="student", teacher=teacher
        )
    assert placed == [True, False]  # replicated, then sharded
    diff = _assert_trees_close(results[True].variables, results[False].variables)
    print(f"fit: max |sharded - replicated| student variable = {diff:.3g}")
    test = {k: v for k, v in results[False].test.items() if isinstance(v, float)}
    assert "accuracy" in test and "agreement" in test
    for key, want in test.items():
        if "latency" not in key and "per_s" not in key:  # timings differ
            assert results[True].test[key] == pytest.approx(want, abs=1e-5), key
