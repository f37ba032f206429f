"""Speed features: vmapped students, the device-resident pipeline, bf16, teacher caches."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_overrides

from distill_jax.config import load_config
from distill_jax.data.augment import augment, to_float
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.losses import kd_loss, topk_kd_loss
from distill_jax.models import create_model
from distill_jax.tasks import Classification
from distill_jax.teachers import NoTeacher, cache_view_key
from distill_jax.train import loop
from distill_jax.train.inputs import teacher_in_dtype
from distill_jax.train.state import member
from distill_jax.train.teacher_cache import check_cache, load_cache, write_cache
from distill_jax.train.workdir import run_spec, same_spec


def _config(data_dir, **extra):
    base = {"student.model": {"name": "mlp", "hidden": [16], "dropout": 0.1}}
    base.update(extra)
    return load_config(None, tiny_overrides(data_dir, **base))


@pytest.fixture(scope="module")
def teacher(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    loop.fit(_config(data_dir), workdir, role="teacher")
    return loop.load_teacher(workdir)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# ------------------------------------------------------------------------------- vmap


def test_vmapped_student_equals_its_single_run(data_dir, tmp_path, teacher):
    """Student i of one vmapped run == a single run with its seed, T and learning rate."""
    grid = _config(
        data_dir,
        **{"vmap.students": 2, "vmap.temperature": [2.0, 4.0], "vmap.learning_rate": [1e-3, 3e-3]},
    )
    many = loop.fit(grid, str(tmp_path / "many"), role="student", teacher=teacher)
    assert len(many.students) == 8
    assert {(s["seed"], s["temperature"], s["learning_rate"]) for s in many.students} == {
        (seed, t, lr) for seed in (0, 1) for t in (2.0, 4.0) for lr in (1e-3, 3e-3)
    }
    i = next(
        k
        for k, s in enumerate(many.students)
        if (s["seed"], s["temperature"], s["learning_rate"]) == (1, 4.0, 3e-3)
    )
    single_cfg = _config(
        data_dir,
        **{
            "distill.temperature": 4.0,
            "student.train.learning_rate": 3e-3,
            "data.shuffle_seed": 0,  # the vmapped run's shared data stream
        },
    )
    single = loop.fit(single_cfg, str(tmp_path / "one"), role="student", seed=1, teacher=teacher)
    got = member(many.variables, i)
    for a, b in zip(_leaves(got), _leaves(single.variables), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert many.students[i]["accuracy"] == pytest.approx(single.test["accuracy"], abs=1e-9)
    # The students really differ (seeds, temperatures and rates all matter).
    accs = {round(s["accuracy"], 6) for s in many.students}
    assert len(accs) > 2
    assert many.test["accuracy"] == pytest.approx(np.mean([s["accuracy"] for s in many.students]))
    assert many.test["accuracy_std"] > 0


def test_vmapped_students_each_start_from_their_own_model(data_dir, tmp_path, teacher):
    """A second stage of vmapped students (TinyBERT's two stages): student i starts from
    student i of the first stage, exactly as a single run started from it."""
    first_dir = str(tmp_path / "first")
    loop.fit(_config(data_dir, **{"vmap.students": 2}), first_dir, role="student")
    starts = tuple(loop.load_teacher(first_dir, member=i) for i in range(2))
    assert starts[0].identity["sha256"] != starts[1].identity["sha256"]
    spec = {"init_from": [t.identity for t in starts]}
    cfg = _config(data_dir, **{"vmap.students": 2})
    second = loop.fit(
        cfg,
        str(tmp_path / "second"),
        role="student",
        teacher=teacher,
        variant=loop.Variant(spec=spec, init_from=starts),
    )
    single_cfg = _config(data_dir, **{"data.shuffle_seed": 0})
    one = loop.fit(
        single_cfg,
        str(tmp_path / "one"),
        role="student",
        seed=1,
        teacher=teacher,
        variant=loop.Variant(spec={"init_from": starts[1].identity}, init_from=starts[1]),
    )
    for a, b in zip(_leaves(member(second.variables, 1)), _leaves(one.variables), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    # One model per student, no more and no fewer; refused before anything is written.
    for wrong in (starts[:1], starts[0]):
        bad = loop.Variant(spec={}, init_from=wrong)
        with pytest.raises(ConfigError, match="2 vmapped students start from one model each"):
            loop.fit(cfg, str(tmp_path / "bad"), role="student", teacher=teacher, variant=bad)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(CheckpointError, match="holds 2 vmapped students: choose one"):
        loop.load_teacher(first_dir)


# --------------------------------------------------------------------- device pipeline


def test_device_resident_and_streamed_pipelines_match_host_batches(data_dir, tmp_path, teacher):
    runs = {}
    for pipeline in ("host", "device", "stream"):
        cfg = _config(data_dir, **{"data.pipeline": pipeline, "student.train.translate": 1})
        runs[pipeline] = loop.fit(cfg, str(tmp_path / pipeline), role="student", teacher=teacher)
    for a, b in zip(
        _leaves(runs["host"].variables), _leaves(runs["device"].variables), strict=True
    ):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- bf16


def test_bf16_kd_loss_within_tolerance_of_float32(data_dir, teacher):
    """Teacher and student forward in bf16; KD (float32 log-softmax) within 2% of f32."""
    data = loop.load_data(_config(data_dir))
    x = to_float(jnp.asarray(data.validation.images[:200]))
    student = create_model({"name": "mlp", "hidden": [64]}, 10)
    s_vars = student.init(jax.random.PRNGKey(0), x[:1])
    losses = {}
    for dtype in ("float32", "bfloat16"):
        t = teacher_in_dtype(teacher, dtype)
        s = create_model({"name": "mlp", "hidden": [64]}, 10, dtype=dtype)
        t_logits, _ = t.model.apply(t.variables, x, train=False)
        s_logits, _ = s.apply(s_vars, x, train=False)
        assert t_logits.dtype == jnp.dtype(dtype) and s_logits.dtype == jnp.dtype(dtype)
        loss = kd_loss(s_logits, t_logits, temperature=4.0)
        assert loss.dtype == jnp.float32  # the reduction is float32 in both modes
        losses[dtype] = float(loss)
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
    assert losses["bfloat16"] != losses["float32"]  # bf16 really ran


def test_bf16_distillation_converges_with_float32_state(data_dir, tmp_path, teacher):
    results = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _config(
            data_dir,
            **{
                "dtype": dtype,
                "student.model": {"name": "mlp", "hidden": [64]},
                "student.train.epochs": 6,
                "student.train.learning_rate": 3e-3,
            },
        )
        result = loop.fit(cfg, str(tmp_path / dtype), role="student", teacher=teacher)
        results[dtype] = result.test["accuracy"]
        assert all(x.dtype == np.float32 for x in _leaves(result.variables))
    assert results["bfloat16"] > 0.85
    assert abs(results["bfloat16"] - results["float32"]) < 0.03


# --------------------------------------------------------------------- teacher cache


def test_topk_kd_with_all_classes_equals_kd_and_matches_numpy():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 10)).astype(np.float32) * 3
    t = rng.normal(size=(6, 10)).astype(np.float32) * 3
    perm = np.stack([rng.permutation(10) for _ in range(6)]).astype(np.int32)
    full = float(kd_loss(s, t, temperature=3.0))
    got = float(topk_kd_loss(s, np.take_along_axis(t, perm, 1), perm, temperature=3.0))
    assert got == pytest.approx(full, rel=1e-6)
    # k < C against a float64 NumPy derivation of the renormalised top-k KL.
    k = 3
    idx = np.argsort(-t, axis=1)[:, :k]
    vals = np.take_along_axis(t, idx, 1).astype(np.float64)
    p = np.exp(vals / 3.0) / np.exp(vals / 3.0).sum(1, keepdims=True)
    log_q = (s / 3.0) - np.log(np.exp(s.astype(np.float64) / 3.0).sum(1, keepdims=True))
    want = 9.0 * np.mean(np.sum(p * (np.log(p) - np.take_along_axis(log_q, idx, 1)), 1))
    got_k = float(topk_kd_loss(s, vals.astype(np.float16), idx.astype(np.int32), 3.0))
    assert got_k == pytest.approx(want, rel=2e-3)  # float16 storage of the values


def test_cached_views_are_the_teachers_outputs_on_those_views(data_dir, tmp_path, teacher):
    data = loop.load_data(_config(data_dir))
    cache_dir = str(tmp_path / "cache")
    task = Classification(translate=1)
    write_cache(teacher, data.train, cache_dir, views=2, task=task, seed=7, progress=False)
    cache = load_cache(cache_dir)
    assert cache.values.shape == (len(data.train), 2, 10) and cache.indices is None
    index = np.arange(40, 50)
    for view in (0, 1):
        images = augment(
            cache_view_key(7, view), to_float(jnp.asarray(data.train.images[index])), index, 1
        )
        want, _ = teacher.model.apply(teacher.variables, images, train=False)
        np.testing.assert_allclose(cache.values[index, view], want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(cache.values[:, 0], cache.values[:, 1])  # the views differ


def test_cached_distillation_equals_online(data_dir, tmp_path, teacher):
    """Without augmentation, a full-logit cache gives the online run's losses and weights."""
    data = loop.load_data(_config(data_dir))
    cache_dir = str(tmp_path / "cache")
    write_cache(teacher, data.train, cache_dir, progress=False)
    online = loop.fit(_config(data_dir), str(tmp_path / "online"), role="student", teacher=teacher)
    cached = loop.fit(
        _config(data_dir, **{"distill.cache": cache_dir}),
        str(tmp_path / "cached"),
        role="student",
    )
    for a, b in zip(_leaves(online.variables), _leaves(cached.variables), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    def train_losses(workdir):
        return [r["kd"] for r in loop.read_metrics(workdir) if r["split"] == "train"]

    np.testing.assert_allclose(
        train_losses(str(tmp_path / "online")), train_losses(str(tmp_path / "cached")), rtol=1e-5
    )


def test_cache_is_refused_for_another_teacher_split_or_augmentation(data_dir, tmp_path, teacher):
    data = loop.load_data(_config(data_dir))
    cache_dir = str(tmp_path / "cache")
    write_cache(teacher, data.train, cache_dir, top_k=3, progress=False)
    cache = load_cache(cache_dir)
    assert cache.values.dtype == np.float16 and cache.indices.shape == (len(data.train), 1, 3)
    plain = Classification()
    check_cache(cache, data.train, "train", task=plain, teacher=teacher)
    with pytest.raises(ConfigError, match="split 'train' .* split 'validation'"):
        check_cache(cache, data.validation, "validation", task=plain)
    with pytest.raises(ConfigError, match="translate=0, but the student trains with translate=2"):
        check_cache(cache, data.train, "train", task=Classification(translate=2))
    other_dir = str(tmp_path / "other_teacher")
    loop.fit(_config(data_dir, seed=5), other_dir, role="teacher")
    with pytest.raises(ConfigError, match="made with another teacher"):
        check_cache(cache, data.train, "train", task=plain, teacher=loop.load_teacher(other_dir))
    # Top-k caches feed KD only; feature methods never.
    cfg = _config(
        data_dir, **{"distill.cache": cache_dir, "distill.losses": {"dkd": {"weight": 1}}}
    )
    with pytest.raises(ConfigError, match="keeps the top 3 only"):
        loop.fit(cfg, str(tmp_path / "s"), role="student")
    assert not os.path.exists(tmp_path / "s")
    # A damaged cache is refused with a clear message.
    meta = json.load(open(os.path.join(cache_dir, "cache.json")))
    meta["dataset"]["num_examples"] += 1
    json.dump(meta, open(os.path.join(cache_dir, "cache.json"), "w"))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_cache(cache_dir)
    with pytest.raises(CheckpointError, match="no finished teacher cache"):
        load_cache(str(tmp_path / "nothing"))


def test_students_by_map_equals_vmap():
    """`vmap.by = "map"` (students one after another) computes what the vmapped step does."""
    from distill_jax.objective import Objective
    from distill_jax.tasks import Classification
    from distill_jax.teachers import OnlineTeacher, Teacher
    from distill_jax.train.optim import make_optimizer, scale_by_lr_scale
    from distill_jax.train.state import create_student_states
    from distill_jax.train.steps import Students, frozen_inputs, make_train_step

    shape = (8, 8, 1)
    student = create_model({"name": "cnn", "widths": [4], "dense": 8, "batch_norm": True}, 10)
    t_model = create_model({"name": "mlp", "hidden": [16]}, 10)
    t_vars = t_model.init(jax.random.PRNGKey(3), jnp.zeros((1, *shape)))
    train = load_config(None).student.train.to_dict()
    tx, _ = make_optimizer(train, steps_per_epoch=5, transforms=[scale_by_lr_scale()])
    lr = train["learning_rate"]
    members = [
        {"seed": seed, "alpha": 0.2, "temperature": t, "learning_rate": lr * (1.0 + seed)}
        for seed, t in ((0, 2.0), (1, 4.0))
    ]
    state = create_student_states(student, tx, shape, members, lr)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (16, *shape), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
        "index": np.arange(16, dtype=np.int32),
    }
    out = {}
    for by in ("vmap", "map"):
        objective = Objective(
            {"alpha": 0.1, "temperature": 4.0, "losses": {}}, task=Classification(translate=1)
        )
        step = make_train_step(
            student,
            tx,
            objective,
            teacher=OnlineTeacher(Teacher(t_model, t_vars, {})),
            data_seed=0,
            students=Students(2, by),
        )
        out[by] = jax.jit(step)(state, frozen_inputs(t_vars), batch)
    for a, b in zip(_leaves(out["vmap"]), _leaves(out["map"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["map"][1]["kd"][0], out["map"][1]["kd"][1])


def test_a_workdir_from_before_the_new_config_keys_still_resumes(data_dir):
    """Specs written before `data.pipeline`, `data.shuffle_seed`, `distill.cache` match."""
    config = _config(data_dir)
    new = run_spec(config, "student", 0, NoTeacher())
    new["distill"] = dict(config.distill.to_dict())
    old = json.loads(json.dumps(new))
    for key in ("pipeline", "shuffle_seed"):
        del old["data"][key]
    del old["distill"]["cache"]
    assert same_spec(old, new)
    old["data"]["shuffle_seed"] = 3  # a real difference still counts
    assert not same_spec(old, new)
