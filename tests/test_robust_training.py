"""Robust training and robust distillation (robust.py): the losses against NumPy, the
inner maximisation's threat set and ascent, the clean limit, a real robustness gain,
per-student adversarial inputs under vmap, and misuse refused before anything is written.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_overrides

from distill_jax import attacks, parallel, robust
from distill_jax.cli import main
from distill_jax.config import load_config
from distill_jax.data import DatasetInfo, load_split
from distill_jax.errors import ConfigError
from distill_jax.losses import cross_entropy, kd_loss
from distill_jax.tasks import Classification
from distill_jax.teachers import CachedTeacher, NoTeacher
from distill_jax.train import loop
from distill_jax.train.setup import check_robust
from distill_jax.train.state import member

# ------------------------------------------------------------------- NumPy references


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(target, logits, t=1.0):
    """Per-example KL(softmax(target / t) || softmax(logits / t))."""
    lp, lq = np_log_softmax(np.asarray(target) / t), np_log_softmax(np.asarray(logits) / t)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def np_ce(logits, y):
    return -np_log_softmax(logits)[np.arange(len(y)), y]


def np_mean(v, mask):
    return v.mean() if mask is None else (v * mask).sum() / max(mask.sum(), 1)


def _logits(b=12, c=7, seed=0):
    rng = np.random.default_rng(seed)
    s, s_adv, t, t_adv = (rng.normal(size=(b, c)) * 2.5 for _ in range(4))
    return s, s_adv, t, t_adv, rng.integers(0, c, b), rng.random(b) < 0.75


# Largest |ours - NumPy| over every case (the report's check figure).
MAX_DIFF: dict[str, float] = {}


@pytest.mark.parametrize("masked", [False, True])
def test_each_loss_equals_its_numpy_rederivation(masked):
    s, s_adv, t, t_adv, y, keep = _logits()
    mask = keep if masked else None
    m = None if mask is None else mask.astype(np.float64)
    # P_T(y | x')^beta from the teacher's adversarial logits.
    trust = np.exp(np_log_softmax(t_adv)[np.arange(len(y)), y]) ** 0.1
    expected = {
        "pgd_at": np_mean(np_ce(s_adv, y), m),
        "trades": np_mean(np_ce(s, y), m) + 6.0 * np_mean(np_kl(s, s_adv), m),
        "ard": 0.7 * 30.0**2 * np_mean(np_kl(t, s_adv, 30.0), m) + 0.3 * np_mean(np_ce(s, y), m),
        "iad": 0.8 * 2.0**2 * np_mean(np_kl(t, s_adv, 2.0), m)
        + 0.8 * np_mean((1 - trust) * np_kl(s, s_adv), m)
        + 0.2 * np_mean(np_ce(s, y), m),
        "rslad": 5 / 6 * np_mean(np_kl(t, s_adv), m) + 1 / 6 * np_mean(np_kl(t, s), m),
        "adaad": 0.6 * np_mean(np_kl(t_adv, s_adv), m) + 0.4 * np_mean(np_kl(t, s), m),
    }
    f32 = [jnp.asarray(a, jnp.float32) for a in (s, s_adv, t, t_adv)]
    s, s_adv, t, t_adv = f32
    y = jnp.asarray(y)
    got = {
        "pgd_at": robust.pgd_at_loss(s_adv, y, mask),
        "trades": robust.trades_loss(s, s_adv, y, mask_B=mask),  # beta = 6 (default)
        "ard": robust.ard_loss(s, s_adv, t, y, alpha=0.7, mask_B=mask),  # T = 30 (default)
        "iad": robust.iad_loss(s, s_adv, t, t_adv, y, alpha=0.8, temperature=2.0, mask_B=mask),
        "rslad": robust.rslad_loss(s, s_adv, t, mask_B=mask),  # w = 5/6 (default)
        "adaad": robust.adaad_loss(s, s_adv, t, t_adv, alpha=0.6, mask_B=mask),
    }
    for name, value in expected.items():
        diff = abs(float(got[name]) - value)
        MAX_DIFF[name] = max(MAX_DIFF.get(name, 0.0), diff)
        assert diff <= 2e-5 * max(1.0, abs(value)), (name, float(got[name]), value)
    # IAD before its `begin`: exactly ARD with IAD's weights.
    off = robust.iad_loss(s, s_adv, t, t_adv, y, alpha=0.8, temperature=2.0, introspect=0.0)
    ard = robust.ard_loss(s, s_adv, t, y, alpha=0.8, temperature=2.0)
    np.testing.assert_allclose(off, ard, rtol=1e-6)
    print({k: f"{v:.2e}" for k, v in MAX_DIFF.items()})


def test_paper_defaults():
    assert robust.DEFAULTS == {
        "pgd_at": {},
        "trades": {"beta": 6.0},
        "ard": {"alpha": 1.0, "temperature": 30.0},
        "iad": {"alpha": 1.0, "beta": 0.1, "temperature": 1.0, "begin": 0.3},
        "rslad": {"adv_weight": 5 / 6},
        "adaad": {"alpha": 1.0},
    }
    section = load_config(None).student.train.robust.to_dict()
    assert section["method"] is None and section["eps"] == 0.3 and section["steps"] == 10
    assert section["trades_beta"] == 6.0 and section["rslad_adv_weight"] == 5 / 6
    iad = robust.make_robust({**section, "method": "iad"}, total_steps=200)
    assert iad.begin_step == 60 and "begin" not in iad.hparams


def test_teacher_gradients_never_flow():
    s, s_adv, t, t_adv, y, _ = (jnp.asarray(a) for a in _logits())
    for loss in (
        lambda t, ta: robust.ard_loss(s, s_adv, t, y),
        lambda t, ta: robust.iad_loss(s, s_adv, t, ta, y),
        lambda t, ta: robust.rslad_loss(s, s_adv, t),
        lambda t, ta: robust.adaad_loss(s, s_adv, t, ta, alpha=0.5),
    ):
        g_t, g_ta = jax.grad(loss, argnums=(0, 1))(t, t_adv)
        assert not np.any(g_t) and not np.any(g_ta)


# ----------------------------------------------------------------- inner maximisation


def _mlp(d_in=16, hidden=24, classes=5, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    w1 = jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in) * 3.0
    w2 = jax.random.normal(k2, (hidden, classes)) / np.sqrt(hidden)
    b1 = 0.1 * jax.random.normal(k3, (hidden,))
    return lambda x: jnp.tanh(x.reshape(len(x), -1) @ w1 + b1) @ w2


def _inputs(b=32, shape=(4, 4), seed=1, classes=5):
    rng = np.random.default_rng(seed)
    x = rng.random((b, *shape)).astype(np.float32)
    x[: b // 4] = 0.0  # rows on the box's corners: the projection must clip them
    x[b // 4 : b // 2] = 1.0
    return jnp.asarray(x), jnp.asarray(rng.integers(0, classes, b))


def _method(name, eps=0.1, **kw):
    section = {**robust.default_section(), "method": name, "eps": eps, **kw}
    return robust.make_robust(section, total_steps=10)


@pytest.mark.parametrize("name", list(robust.METHODS))
def test_inner_max_stays_in_the_threat_set_and_increases_its_objective(name):
    student_fn, teacher_fn = _mlp(seed=0), _mlp(seed=5)
    x, y = _inputs()
    teacher_out = {"logits": teacher_fn(x)}
    method = _method(name, eps=0.1)
    (x_adv,) = method.views(
        student_fn, teacher_fn, x, y, teacher_out, jax.random.PRNGKey(3)
    ).values()
    assert x_adv.shape == x.shape
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
    assert float(jnp.max(jnp.abs(x_adv - x))) > 0.05  # it moved
    inner = method.inner_loss(student_fn, teacher_fn, x, y, teacher_out)
    at_x, at_adv = float(jnp.sum(inner(x))), float(jnp.sum(inner(x_adv)))
    assert at_adv > at_x + 0.1 * abs(at_x) + 1e-3, (at_x, at_adv)
    # And it is not a random point: the ascent beats the method's own start.
    start = float(jnp.sum(inner(method._start(jax.random.PRNGKey(3), x, 0.1).clip(0, 1))))
    assert at_adv > start


def test_eps_warmup_ramps_the_training_radius_and_then_holds_it():
    student_fn = _mlp(seed=0)
    x, y = _inputs()
    method = _method("pgd_at", eps=0.2, eps_warmup=0.5)  # 10 steps: a 5-step ramp
    assert method.eps_warmup_steps == 5
    for step, eps in [(0, 0.04), (1, 0.08), (4, 0.2), (9, 0.2)]:
        np.testing.assert_allclose(float(method.eps_at(step)), eps, rtol=1e-6)
        (x_adv,) = method.views(
            student_fn, None, x, y, {}, jax.random.PRNGKey(1), jnp.asarray(step)
        ).values()
        moved = float(jnp.max(jnp.abs(x_adv - x)))
        assert eps * 0.9 < moved <= eps + 1e-6, (step, moved)
    # Without a ramp the radius is eps at every step; the explicit step size scales with it.
    assert _method("pgd_at", eps=0.2).eps_at(jnp.asarray(0)) == 0.2
    ramped = _method("pgd_at", eps=0.2, eps_warmup=0.5, step_size=0.05, steps=1, random_start=False)
    (x_adv,) = ramped.views(student_fn, None, x, y, {}, jax.random.PRNGKey(1), 0).values()
    assert float(jnp.max(jnp.abs(x_adv - x))) == pytest.approx(0.01, rel=1e-5)


def test_a_tiny_eps_reduces_each_objective_to_its_clean_counterpart():
    student_fn, teacher_fn = _mlp(seed=0), _mlp(seed=5)
    x, y = _inputs()
    s, t = student_fn(x), teacher_fn(x)
    ce = cross_entropy(s, y)
    clean = {
        "pgd_at": ce,
        "trades": ce,
        "ard": 0.5 * kd_loss(s, t, temperature=30.0) + 0.5 * ce,  # ARD -> Hinton's KD
        "iad": 0.5 * kd_loss(s, t, temperature=1.0) + 0.5 * ce,
        "rslad": kd_loss(s, t, temperature=1.0),  # both terms: KL(T(x) || S(x))
        "adaad": kd_loss(s, t, temperature=1.0),
    }
    for name, expected in clean.items():
        method = _method(name, eps=1e-6, ard_alpha=0.5, iad_alpha=0.5)
        views = method.views(student_fn, teacher_fn, x, y, {"logits": t}, jax.random.PRNGKey(0))
        student = {"logits": s, "adv_logits": student_fn(views["adv"])}
        teacher = {"logits": t, "adv_logits": teacher_fn(views["adv"])}
        value, _ = method.task_loss(student, teacher, y, None, jnp.asarray(5))
        np.testing.assert_allclose(value, expected, rtol=2e-4, err_msg=name)
        # ... and a real eps does not.
        method = _method(name, eps=0.2, ard_alpha=0.5, iad_alpha=0.5)
        views = method.views(student_fn, teacher_fn, x, y, {"logits": t}, jax.random.PRNGKey(0))
        student["adv_logits"] = student_fn(views["adv"])
        teacher["adv_logits"] = teacher_fn(views["adv"])
        value, _ = method.task_loss(student, teacher, y, None, jnp.asarray(5))
        assert float(value) > float(expected) * 1.05, name


# ------------------------------------------------------------------ training on digits


def _overrides(data_dir, **extra):
    base = {
        "teacher.train.epochs": 10,
        "teacher.train.learning_rate": 1e-2,
        "teacher.train.translate": 0,
        "log.every_steps": 100,
        "checkpoint.every_steps": 1000,
        "eval.every_epochs": 100,
    }
    return tiny_overrides(data_dir, **{**base, **extra})


def test_pgd_training_raises_pgd_robust_accuracy_on_digits(data_dir, tmp_path, monkeypatch):
    # On one device: with the 8 fake CPU devices, XLA's in-process all-reduce inside this
    # run's PGD step intermittently aborts the process on 2 oversubscribed cores
    # ("rendezvous.cc: Termination timeout for all reduce", jaxlib 0.10.2). The sharded
    # robust step is covered by the other tests here; this one measures the method.
    from distill_jax.train import setup as setup_module

    one_device = jax.devices()[:1]
    monkeypatch.setattr(
        setup_module,
        "make_strategy",
        lambda name, devices=None, **kw: parallel.make_strategy(name, one_device, **kw),
    )
    spec = attacks.parse_attack({"name": "pgd", "eps": 0.1, "steps": 10})
    split = load_split("digits", "test", data_dir)
    out = {}
    for method in (None, "pgd_at"):
        extra = {"teacher.train.robust.method": method, "teacher.train.robust.eps": 0.1}
        cfg = load_config(None, _overrides(data_dir, **extra))
        fitted = loop.fit(cfg, str(tmp_path / str(method)), role="teacher")
        r = attacks.robust_accuracy(fitted.model.apply, fitted.variables, split, spec)
        out[method] = (r["clean_accuracy"], r["robust_accuracy"])
    print("clean, PGD-10 robust accuracy at eps 0.1:", out)
    (clean_std, rob_std), (clean_at, rob_at) = out[None], out["pgd_at"]
    assert rob_at >= rob_std + 0.1  # measured: 0.53 -> 0.73
    assert clean_at >= 0.9 and clean_std >= 0.9
    # The adversarial training metrics are logged beside the clean ones.
    train = [r for r in loop.read_metrics(str(tmp_path / "pgd_at")) if r["split"] == "train"]
    assert {"adv_accuracy", "adv_ce", "pgd_at", "accuracy", "ce"} <= set(train[-1])
    assert train[-1]["loss"] == pytest.approx(train[-1]["pgd_at"])
    assert train[-1]["adv_accuracy"] < train[-1]["accuracy"]
    spec_file = json.load(open(tmp_path / "pgd_at" / "config.json"))
    assert spec_file["train"]["robust"]["method"] == "pgd_at"
    assert spec_file["train"]["robust"]["eps"] == 0.1


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("robust") / "teacher")
    assert main(["train", "--workdir", workdir, *_cli_overrides(data_dir)]) == 0
    return workdir


def _cli_overrides(data_dir, **extra):
    return [f"--config.{o}" for o in tiny_overrides(data_dir, **extra)]


def test_vmapped_students_each_attack_themselves(data_dir, tmp_path, teacher_dir):
    """Student i of a vmapped robust run == the single run of its seed, so each student
    made its adversarial inputs with its own parameters (one shared x' would differ)."""
    teacher = loop.load_teacher(teacher_dir)
    extra = {
        "student.train.robust.method": "adaad",  # the teacher on x' too
        "student.train.robust.eps": 0.1,
        "student.train.robust.steps": 3,
        "student.train.epochs": 1,
        "student.train.learning_rate": 1e-2,
        "data.shuffle_seed": 0,
    }
    many_cfg = load_config(None, tiny_overrides(data_dir, **extra, **{"vmap.students": 2}))
    many = loop.fit(many_cfg, str(tmp_path / "many"), role="student", teacher=teacher)
    single_cfg = load_config(None, tiny_overrides(data_dir, **extra))
    for i in (0, 1):
        one = loop.fit(
            single_cfg, str(tmp_path / f"one{i}"), role="student", seed=i, teacher=teacher
        )
        got = jax.tree.leaves(member(many.variables, i))
        for a, b in zip(got, jax.tree.leaves(one.variables), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    train = [r for r in loop.read_metrics(str(tmp_path / "many")) if r["split"] == "train"]
    assert "adv_accuracy" in train[-1] and "adaad" in train[-1]


def test_a_resumed_run_with_changed_robust_settings_is_refused(data_dir, tmp_path):
    workdir = str(tmp_path / "r")
    extra = {"teacher.train.robust.method": "trades", "teacher.train.epochs": 1}
    extra.update({"teacher.train.robust.steps": 2, "checkpoint.every_steps": 5})
    loop.fit(load_config(None, tiny_overrides(data_dir, **extra)), workdir, role="teacher")
    changed = load_config(
        None, tiny_overrides(data_dir, **extra, **{"teacher.train.robust.trades_beta": 1.0})
    )
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        loop.setup(changed, workdir, role="teacher")


# ----------------------------------------------------------------------------- misuse


def _refused(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    "command, extra, fragments",
    [
        ("train", {"teacher.train.robust.method": "pgd"}, ["'pgd' is not valid", "pgd_at"]),
        ("train", {"teacher.train.robust.method": "ard"}, ["teacher trains on labels"]),
        ("train", {"teacher.train.robust.eps": 1.5}, ["eps = 1.5 is outside the input range"]),
        ("train", {"teacher.train.robust.eps": -0.1}, ["must be in (0, 1)"]),
        ("train", {"teacher.train.robust.steps": 0}, ["steps must be >= 1"]),
        ("train", {"student.train.robust.step_size": "big"}, ["number or None"]),
        ("train", {"teacher.train.robust.typo": 1}, ["unknown config key"]),
        ("run", {"student.train.robust.method": "ard"}, ["trains the student alone"]),
        (
            "capacity",
            {
                "student.train.robust.method": "iad",
                "capacity.students": {"h8": {"name": "mlp", "hidden": [8]}},
            },
            ["trains every student size"],
        ),
        (
            "train",
            {"teacher.train.robust.method": "trades", "teacher.train.robust.random_start": False},
            ["zero gradient at x"],
        ),
        (
            "train",
            {"teacher.train.robust.method": "pgd_at", "teacher.train.robust.eps_warmup": 1.0},
            ["teacher.train.robust.eps_warmup = 1.0", "[0, 1)"],
        ),
    ],
)
def test_bad_robust_config_is_one_line_exit_2_nothing_written(
    data_dir, tmp_path, capsys, command, extra, fragments
):
    workdir = tmp_path / "w"
    code = main([command, "--workdir", str(workdir), *_cli_overrides(data_dir, **extra)])
    _refused(capsys, code, *fragments)
    assert not workdir.exists()


def test_distillation_methods_refuse_what_cannot_feed_them(data_dir, tmp_path, capsys, teacher_dir):
    # A teacher cache cannot label x': iad and adaad are refused; ard / rslad read T(x).
    cache = tmp_path / "cache"
    assert main(["cache-teacher", "--workdir", str(cache), "--teacher", teacher_dir,
                 *_cli_overrides(data_dir)]) == 0  # fmt: skip
    capsys.readouterr()
    for method in ("iad", "adaad"):
        student = tmp_path / f"s_{method}"
        extra = {"student.train.robust.method": method, "student.train.robust.steps": 2}
        code = main(
            ["distill", "--workdir", str(student), "--teacher_cache", str(cache),
             *_cli_overrides(data_dir, **extra)]
        )  # fmt: skip
        _refused(capsys, code, f"robust.method = {method}", "distill.cache cannot label")
        assert not student.exists()
    # With distill.losses, a whole robust distillation objective is ambiguous.
    student = tmp_path / "s_losses"
    extra = {"student.train.robust.method": "ard", "distill.losses": {"kd": {"weight": 1.0}}}
    code = main(
        ["distill", "--workdir", str(student), "--teacher", teacher_dir,
         *_cli_overrides(data_dir, **extra)]
    )  # fmt: skip
    _refused(capsys, code, "distill.losses is set", "use one or the other")
    assert not student.exists()


def test_check_robust_refuses_token_ids_no_teacher_and_top_k_caches(tiny_config):
    task = Classification()
    images = DatasetInfo("digits", 10, (8, 8, 1), {"train": 10})
    tokens = DatasetInfo("mr", 2, (64,), {"train": 10}, input_kind="tokens")
    cfg = tiny_config(**{"student.train.robust.method": "pgd_at"})
    with pytest.raises(ConfigError, match="robust.method = pgd_at perturbs pixels") as e:
        check_robust(cfg, "student", tokens, NoTeacher(), task, 10)
    assert "token ids" in str(e.value) and "\n" not in str(e.value)
    cfg = tiny_config(**{"student.train.robust.method": "ard"})
    with pytest.raises(ConfigError, match="distils from a teacher, and this student trains"):
        check_robust(cfg, "student", images, NoTeacher(), task, 10)
    topk = CachedTeacher(None, None, 0, 1, 1, spec={"top_k": 3})
    with pytest.raises(ConfigError, match="keeps the top 3 only"):
        check_robust(cfg, "student", images, topk, task, 10)
    full = CachedTeacher(None, None, 0, 1, 1, spec={"top_k": 0})
    assert check_robust(cfg, "student", images, full, task, 10).name == "ard"
    assert check_robust(tiny_config(), "student", tokens, NoTeacher(), task, 10).name is None


def test_pmap_equals_jit_with_adversarial_inputs(data_dir, tmp_path):
    """Each device attacks its own shard under pmap: the same x' as the jit-sharded step
    (without a random start, whose draws differ per device by design)."""
    extra = {
        "teacher.train.robust.method": "pgd_at",
        "teacher.train.robust.random_start": False,
        "teacher.train.robust.steps": 3,
        "teacher.train.epochs": 1,
    }
    got = {}
    for strategy in ("jit", "pmap"):
        cfg = load_config(
            None, tiny_overrides(data_dir, **extra, **{"parallel.strategy": strategy})
        )
        got[strategy] = loop.fit(cfg, str(tmp_path / strategy), role="teacher").variables
    leaves = zip(jax.tree.leaves(got["jit"]), jax.tree.leaves(got["pmap"]), strict=True)
    for a, b in leaves:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------- experiments/robust_kd driver


@pytest.mark.slow
def test_robust_kd_driver_tiny(data_dir, tmp_path, monkeypatch):
    """The experiment's driver on tiny MLPs and digits: both teachers, student rows
    PGD-AT / KD / ARD / AdaAD, two attacks, the table; resumable, keeping the first
    call's times."""
    from distill_jax.config import import_file

    run = import_file(os.path.join(os.path.dirname(__file__), "..", "experiments/robust_kd/run.py"))
    c = run.common
    monkeypatch.setattr(c, "DATA", {"name": "digits", "data_dir": data_dir})
    monkeypatch.setattr(c, "TEACHER", {"name": "mlp", "hidden": [32]})
    monkeypatch.setattr(c, "STUDENT", {"name": "mlp", "hidden": [16]})
    monkeypatch.setattr(c, "EPOCHS", {"teacher": 2, "student": 1})
    monkeypatch.setattr(c, "EPS", 0.1)
    monkeypatch.setattr(c, "STEPS", 2)
    tiny_attacks = [{"name": "fgsm", "eps": 0.1}, {"name": "apgd_dlr", "eps": 0.1, "steps": 3}]
    monkeypatch.setattr(c, "ATTACKS", tiny_attacks)
    rows = ("pgd_at", "kd_robust", "ard", "adaad")
    results = run.run(str(tmp_path / "rk"), rows=rows, seeds=2, say=lambda *a: None)
    assert set(results["teachers"]) == {"standard", "pgd"} and list(results["rows"]) == list(rows)
    for r in results["rows"].values():
        assert set(r) == {"clean", "fgsm", "apgd_dlr"}
        assert all(len(r[k]) == 2 and r[k][i] <= r["clean"][i] for k in r for i in (0, 1))
    config = json.load(open(tmp_path / "rk" / "ard" / "config.json"))
    assert len(config["students"]) == 2  # the two seeds trained vmapped
    assert config["train"]["robust"]["method"] == "ard" and config["train"]["robust"]["eps"] == 0.1
    table = (tmp_path / "rk" / "results.md").read_text()
    assert "| ARD (Goldblum et al. 2020) |" in table and "apgd_dlr" in table
    assert "| minutes |" in table and "Minutes:" in table
    again = run.run(str(tmp_path / "rk"), rows=rows, seeds=2, say=lambda *a: None)
    assert again["rows"] == results["rows"]
    # The second call trains nothing and keeps the first call's times.
    assert again["seconds"] == {**results["seconds"], "this_call": again["seconds"]["this_call"]}


def test_token_ids_are_refused_through_the_cli(data_dir, tmp_path, capsys):
    load_split("mr", "test[:32]", data_dir)  # prepared first: its progress bars are not ours
    capsys.readouterr()
    workdir = tmp_path / "w"
    extra = {
        "data.name": "mr",
        "data.train_split": "train[:64]",
        "data.validation_split": "validation[:32]",
        "data.test_split": "test[:32]",
        "data.eval_batch_size": 32,
        "teacher.model": {"name": "textcnn", "embedding_dim": 8, "num_filters": 4},
        "teacher.train.batch_size": 32,
        "teacher.train.translate": 0,
        "teacher.train.robust.method": "pgd_at",
    }
    code = main(["train", "--workdir", str(workdir), *_cli_overrides(data_dir, **extra)])
    _refused(capsys, code, "teacher.train.robust.method = pgd_at perturbs pixels", "token ids")
    assert not workdir.exists()
