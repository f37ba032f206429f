"""The text distillation experiment (experiments/text_kd) end to end with tiny BERTs.

The default tests evaluate the experiment's objective (logits + hidden states + attention,
from its own config file) on real docstring batches with tiny BERTs, and train a tiny
teacher and distil a tiny student from its logits through the CLI (about 30 s); the slow
tests do the same with the TinyBERT objective and run the experiment's driver (`run.py`:
every setting, the table, embedding distillation) on the same tiny models.
"""

import json
import os

import numpy as np
import pytest

from distill_jax.cli import main
from distill_jax.config import import_file

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENT = os.path.join(HERE, "..", "experiments", "text_kd")
TEACHER = {
    "name": "bert",
    "hidden_size": 16,
    "num_layers": 6,
    "num_heads": 4,
    "intermediate_size": 32,
    "max_position": 32,
    "head_input": "mean",
}
STUDENT = {
    "name": "bert",
    "hidden_size": 8,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 16,
    "max_position": 32,
    "head_input": "mean",
}


def tiny(data_dir, **extra):
    items = {
        "data.data_dir": data_dir,
        "data.train_split": "train[:64]",
        "data.validation_split": "validation[:32]",
        "data.test_split": "test[:32]",
        "data.eval_batch_size": 32,
        "teacher.model": TEACHER,
        "student.model": STUDENT,
        "teacher.train.epochs": 1,
        "student.train.epochs": 1,
        "teacher.train.warmup_epochs": 0.0,
        "student.train.warmup_epochs": 0.0,
        "eval.latency_batch_size": 4,
        "log.every_steps": 1,
    }
    items.update(extra)
    return [f"{k}={v!r}" for k, v in items.items()]


def test_text_kd_objective_tiny(data_dir):
    """The experiment's objective on real docstring batches: every term finite, gradients
    reach the student and the projections, none the teacher."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from distill_jax.config import load_config
    from distill_jax.data import load_split
    from distill_jax.losses import cross_entropy
    from distill_jax.models import create_model
    from distill_jax.objective import Objective

    cfg = load_config(os.path.join(EXPERIMENT, "distill_hidden_attention.py"), tiny(data_dir))
    split = load_split(cfg.data.name, "train[:16]", data_dir)
    ids, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
    classes = split.info.num_classes
    teacher = create_model(cfg.teacher.model.to_dict(), classes)
    student = create_model(cfg.student.model.to_dict(), classes)
    (t_logits, t_feats), t_vars = jax.jit(teacher.init_with_output)(jax.random.key(0), ids)
    (s_logits, s_shapes), s_vars = jax.eval_shape(student.init_with_output, jax.random.key(1), ids)
    s_vars = jax.jit(student.init)(jax.random.key(1), ids)
    objective = Objective(cfg.distill.to_dict(), s_shapes, t_feats)
    assert [t.name for t in objective.terms] == ["attention_kl", "hidden_mse", "kd"]
    batch = {"label": labels, "index": jnp.arange(len(labels)), "mask": None}
    teacher_out = {"logits": t_logits, "features": t_feats}

    @jax.jit
    def init_methods(key, teacher_out):
        zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)  # noqa: E731
        s_out = {"logits": zeros(s_logits), "features": zeros(s_shapes)}
        return objective.init(key, s_out, teacher_out, batch)

    per_method = init_methods(jax.random.key(2), teacher_out)
    extra = {name: v["params"] for name, v in per_method.items() if "params" in v}
    assert extra["hidden_mse"]["proj1"]["kernel"].shape == (8, 16)

    @jax.jit
    def loss_fn(params, extra, teacher_out):
        logits, feats = student.apply(
            {"params": params}, ids, train=True, rngs={"dropout": jax.random.key(3)}
        )
        loss, terms, _ = objective(
            extra, {}, {"logits": logits, "features": feats}, teacher_out, batch, jax.random.key(4)
        )
        return loss, dict(terms, _ce_check=cross_entropy(logits, labels))

    (loss, terms), grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
        s_vars["params"], extra, teacher_out
    )
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in terms.values())
    # The objective's total is the whole loss: alpha * CE (its first term) + the rest.
    weights = {t.name: t.weight for t in objective.terms}
    np.testing.assert_allclose(float(terms["ce"]), float(terms.pop("_ce_check")), rtol=1e-6)
    want = cfg.distill.alpha * float(terms["ce"])
    want += sum(w * float(terms[name]) for name, w in weights.items())
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(terms["hidden_mse"]) > 0 and float(terms["attention_kl"]) > 0
    g_student, g_extra, g_teacher = grads
    assert float(jnp.abs(g_student["layer2"]["query"]["kernel"]).max()) > 0
    assert float(jnp.abs(g_extra["hidden_mse"]["proj0"]["kernel"]).max()) > 0
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g_teacher))


# The default suite trains a 2-layer teacher and distils its logits (seconds); the slow
# variant runs the experiment's TinyBERT objective from a 6-layer teacher.
CLI_CASES = [
    pytest.param("distill_logits.py", 2, ("ce", "kd"), id="logits"),
    pytest.param(
        "distill_hidden_attention.py",
        6,
        ("ce", "kd", "hidden_mse", "attention_kl"),
        id="hidden_attention",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("setting,teacher_layers,terms", CLI_CASES)
def test_text_kd_cli_tiny(data_dir, tmp_path, setting, teacher_layers, terms):
    """`train` fine-tunes the teacher and `distill` distils it, through the CLI."""
    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
    config = os.path.join(EXPERIMENT, setting)
    overrides = tiny(data_dir, **{"teacher.model": {**TEACHER, "num_layers": teacher_layers}})
    args = [f"--config.{o}" for o in overrides]
    teacher_config = os.path.join(EXPERIMENT, "teacher.py")
    assert main(["train", "--config", teacher_config, "--workdir", teacher, *args]) == 0
    assert (
        main(["distill", "--config", config, "--workdir", student, "--teacher", teacher, *args])
        == 0
    )
    result = json.loads(open(os.path.join(student, "eval.json")).read())
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["agreement"] <= 1.0
    assert result["count"] == 32 and result["params"] > 0
    records = [json.loads(line) for line in open(os.path.join(student, "metrics.jsonl"))]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2  # 64 docstrings, batch 32, one epoch, logged every step
    for term in terms:
        assert term in train[0], term
        assert all(np.isfinite(r[term]) for r in train), term
    assert train[0]["kd"] > 0


@pytest.mark.slow
def test_text_kd_driver_tiny(data_dir, tmp_path):
    run = import_file(os.path.join(EXPERIMENT, "run.py"))
    settings = run.load_settings(tiny(data_dir))
    from distill_jax.config import load_config

    settings["embedding"] = load_config(
        os.path.join(EXPERIMENT, "embedding.py"),
        tiny(data_dir, **{"student.model": {**STUDENT, "embedding_dim": 16}}),
    )
    results = run.run(settings, str(tmp_path / "run"), seeds=2, say=lambda *a: None)
    assert len(results["runs"]["distill_logits"]) == 2
    table = (tmp_path / "run" / "results.md").read_text()
    assert "distilled: logits + hidden + attention" in table and " ± " in table
    emb = results["embedding"]
    assert -1.0 <= emb["cosine"] <= 1.0 and 0.0 <= emb["recall@10"] <= 1.0


def test_token_views_cache_holds_the_teacher_on_the_students_views(data_dir, tmp_path, capsys):
    """`cache-teacher --views 2` with transfer-set augmentation: each record is the
    teacher's output on exactly the view a student trained from the cache sees; a student
    that trains without the cache's augmentation is refused."""
    import jax.numpy as jnp

    from distill_jax.config import load_config
    from distill_jax.teachers import cache_view_key
    from distill_jax.train.loop import load_data, load_teacher, make_task
    from distill_jax.train.teacher_cache import load_cache

    teacher_dir, cache_dir = str(tmp_path / "teacher"), str(tmp_path / "cache")
    config = os.path.join(EXPERIMENT, "distill_logits.py")
    aug = {"student.train.token_augment.mask": 0.3, "student.train.token_augment.ngram": 0.5}
    two_layers = {"teacher.model": {**TEACHER, "num_layers": 2}}
    args = [f"--config.{o}" for o in tiny(data_dir, **two_layers)]
    aug_args = [f"--config.{o}" for o in tiny(data_dir, **aug)][-2:]
    assert main(["train", "--config", config, "--workdir", teacher_dir, *args]) == 0
    cache_args = ["--teacher", teacher_dir, "--views", "2", "--split", "train[:64]"]
    cache_args += [*args, *aug_args]
    assert main(["cache-teacher", "--config", config, "--workdir", cache_dir, *cache_args]) == 0
    assert "64 examples x 2 view(s)" in capsys.readouterr().out

    cfg = load_config(config, tiny(data_dir, **aug))
    data = load_data(cfg)
    task = make_task(cfg, "student", data)
    teacher = load_teacher(teacher_dir)
    cache = load_cache(cache_dir)
    assert cache.meta["token_augment"] == task.augment_spec["token_augment"]
    index = jnp.arange(len(data.train))
    for view in range(2):
        ids = task.augment(cache_view_key(cache.step_spec["seed"], view), data.train.images, index)
        logits = teacher.model.apply(teacher.variables, ids, train=False)[0]
        np.testing.assert_allclose(cache.values[:, view], np.asarray(logits), atol=1e-5)
    views = [task.augment(cache_view_key(0, v), data.train.images, index) for v in range(2)]
    assert not np.array_equal(views[0], views[1])

    student = str(tmp_path / "student")
    distill = ["distill", "--config", config, "--workdir", student, "--teacher_cache", cache_dir]
    # Batches cut to their length (data.length_bucket) see the views the cache labelled.
    assert main([*distill, *args, *aug_args, "--config.data.length_bucket=8"]) == 0
    assert main([*distill[:4], str(tmp_path / "other"), *distill[5:], *args]) == 2
    assert "token_augment" in capsys.readouterr().err
