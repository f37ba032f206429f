"""White-box attacks (distill_jax/attacks.py): the threat model holds, FGSM and PGD against
NumPy / closed forms on linear models, APGD's kept best loss, robust accuracy on a trained
`digits` MLP, agreement with foolbox's LinfPGD, and the config / `evaluate --attack` paths."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_overrides

from distill_jax import attacks
from distill_jax.cli import main
from distill_jax.data import DatasetInfo
from distill_jax.errors import ConfigError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def linear_apply(variables, x_BX, train=False):
    """A linear classifier z = x W + b on flattened inputs, as `apply` of a model."""
    del train
    x_BD = x_BX.reshape(x_BX.shape[0], -1)
    return x_BD @ variables["W"] + variables["b"], {}


def mlp_apply(variables, x_BX, train=False):
    """A random one-hidden-layer tanh MLP (non-linear: the attacks must iterate)."""
    del train
    h_BH = jnp.tanh(x_BX.reshape(x_BX.shape[0], -1) @ variables["W1"] + variables["b1"])
    return h_BH @ variables["W2"] + variables["b2"], {}


def _mlp(d_in=12, hidden=16, classes=5, seed=0):
    rng = np.random.RandomState(seed)
    return {
        "W1": jnp.asarray(rng.randn(d_in, hidden).astype(np.float32) * 2.0),
        "b1": jnp.asarray(rng.randn(hidden).astype(np.float32)),
        "W2": jnp.asarray(rng.randn(hidden, classes).astype(np.float32) * 2.0),
        "b2": jnp.zeros(classes, jnp.float32),
    }


def _batch(b=24, shape=(3, 4), seed=1, classes=5):
    """Inputs that reach both ends of [0, 1] (so the box constraint is active)."""
    rng = np.random.RandomState(seed)
    x = rng.uniform(0.0, 1.0, (b, *shape)).astype(np.float32)
    x[: b // 3] = np.round(x[: b // 3])  # some rows of pure 0 / 1 pixels
    return jnp.asarray(x), jnp.asarray(rng.randint(0, classes, b).astype(np.int32))


CASES = [  # (name, norm, eps, kwargs)
    ("fgsm", "linf", 0.1, {}),
    ("pgd", "linf", 0.1, {"steps": 10, "restarts": 2}),
    ("pgd", "l2", 0.5, {"steps": 10, "restarts": 2}),
    ("apgd_ce", "linf", 0.1, {"steps": 10, "restarts": 2}),
    ("apgd_dlr", "linf", 0.1, {"steps": 10, "restarts": 2}),
    ("apgd_ce", "l2", 0.5, {"steps": 10, "restarts": 2}),
]


def _run(name, norm, eps, kwargs, apply_fn, variables, x, y):
    key = jax.random.PRNGKey(0)
    if name == "fgsm":
        return attacks.fgsm(apply_fn, variables, x, y, eps=eps)
    if name == "pgd":
        return attacks.pgd(apply_fn, variables, x, y, key, eps=eps, norm=norm, **kwargs)
    loss = name.split("_")[1]
    return attacks.apgd(apply_fn, variables, x, y, key, eps=eps, loss=loss, norm=norm, **kwargs)


@pytest.mark.parametrize("name, norm, eps, kwargs", CASES)
def test_perturbation_stays_within_eps_and_the_input_range(name, norm, eps, kwargs):
    variables, (x, y) = _mlp(), _batch()
    result = jax.jit(lambda v, x, y: _run(name, norm, eps, kwargs, mlp_apply, v, x, y))(
        variables, x, y
    )
    delta = np.asarray(result.x_adv, np.float64) - np.asarray(x, np.float64)
    delta_BD = delta.reshape(len(delta), -1)
    if norm == "linf":
        assert np.abs(delta_BD).max() <= eps + 1e-6
    else:
        assert np.sqrt((delta_BD**2).sum(1)).max() <= eps * (1 + 1e-5)
    assert np.asarray(result.x_adv).min() >= 0.0 and np.asarray(result.x_adv).max() <= 1.0
    assert np.abs(delta_BD).max() > 0.5 * eps / (1 if norm == "linf" else 12**0.5)  # it moved
    # success is the model's verdict on the returned inputs
    logits, _ = mlp_apply(variables, result.x_adv)
    np.testing.assert_array_equal(result.success_B, np.argmax(logits, -1) != np.asarray(y))
    assert result.success_B.mean() > 0  # the attack fools the model somewhere


def test_fgsm_equals_a_numpy_derivation_on_a_linear_model():
    rng = np.random.RandomState(3)
    d, c, b, eps = 20, 6, 32, 0.08
    W, bias = rng.randn(d, c), rng.randn(c)
    x = rng.uniform(0, 1, (b, d))
    x[:8] = np.round(x[:8])  # on the bounds: the clip matters
    y = rng.randint(0, c, b)
    # d CE / d x for z = x W + b: (softmax(z) - onehot(y)) W^T
    z = x @ W + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(c)[y]) @ W.T
    expected = np.clip(x + eps * np.sign(grad), 0.0, 1.0)
    variables = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(bias, jnp.float32)}
    result = jax.jit(lambda v, x, y: attacks.fgsm(linear_apply, v, x, y, eps=eps))(
        variables, jnp.asarray(x, jnp.float32), jnp.asarray(y)
    )
    np.testing.assert_allclose(np.asarray(result.x_adv), expected, rtol=0, atol=1e-6)
    assert np.any(expected == 0.0) and np.any(expected == 1.0)
    zz = expected @ W + bias
    np.testing.assert_array_equal(np.asarray(result.success_B), zz.argmax(1) != y)


def _two_class(seed=4, d=16, b=20):
    """A 2-class linear model and inputs in [0.3, 0.7] labelled as it predicts them."""
    rng = np.random.RandomState(seed)
    W, bias = rng.randn(d, 2), rng.randn(2) * 0.1
    x = rng.uniform(0.3, 0.7, (b, d))
    y = (x @ W + bias).argmax(1)
    variables = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(bias, jnp.float32)}
    return W, bias, x, y, variables


def _margin(W, bias, x, y):
    z = x @ W + bias
    return z[np.arange(len(y)), y] - z[np.arange(len(y)), 1 - y]


@pytest.mark.parametrize("norm, eps, random_init", [("linf", 0.05, True), ("l2", 0.2, False)])
def test_pgd_reaches_the_closed_form_worst_case_of_a_linear_model(norm, eps, random_init):
    # For z = x W + b with 2 classes, CE is decreasing in the margin m = (w_y - w_o) x +
    # (b_y - b_o), so the worst case in the ball (box inactive: x +- eps stays in [0, 1])
    # lowers m by eps * ||w_y - w_o||_1 (linf) or eps * ||w_y - w_o||_2 (l2).
    W, bias, x, y, variables = _two_class()
    w_diff = (W[:, 0] - W[:, 1])[None] * np.where(y == 0, 1, -1)[:, None]  # w_y - w_o
    q = 1 if norm == "linf" else 2
    expected = _margin(W, bias, x, y) - eps * np.linalg.norm(w_diff, ord=q, axis=1)
    result = attacks.pgd(
        linear_apply,
        variables,
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y),
        jax.random.PRNGKey(0),
        eps=eps,
        norm=norm,
        steps=20,
        random_init=random_init,
    )
    got = _margin(W, bias, np.asarray(result.x_adv, np.float64), y)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    if norm == "linf":  # the vertex x - eps * sign(w_y - w_o)
        np.testing.assert_allclose(result.x_adv, x - eps * np.sign(w_diff), atol=1e-6)


def test_pgd_l2_from_a_random_start_approaches_the_closed_form():
    W, bias, x, y, variables = _two_class()
    eps = 0.2
    w_diff = (W[:, 0] - W[:, 1])[None] * np.where(y == 0, 1, -1)[:, None]
    expected = _margin(W, bias, x, y) - eps * np.linalg.norm(w_diff, axis=1)
    result = attacks.pgd(
        linear_apply,
        variables,
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y),
        jax.random.PRNGKey(1),
        eps=eps,
        norm="l2",
        steps=50,
        step_size=0.05,
    )
    got = _margin(W, bias, np.asarray(result.x_adv, np.float64), y)
    assert np.all(got >= expected - 1e-5)  # nothing beats the worst case
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)


def test_restarts_keep_the_worst_result_per_example():
    # Restart r starts from fold_in(key, r), so a run with more restarts repeats the runs
    # of one with fewer: per example it must be at least as bad for the model.
    variables, (x, y) = _mlp(seed=5), _batch(seed=6)
    kwargs = {"eps": 0.03, "steps": 3, "step_size": 0.01}
    runs = [
        attacks.pgd(mlp_apply, variables, x, y, jax.random.PRNGKey(2), restarts=r, **kwargs)
        for r in (1, 2, 4)
    ]
    for fewer, more in zip(runs[:-1], runs[1:], strict=True):
        assert np.all(np.asarray(more.success_B) >= np.asarray(fewer.success_B))
        robust = ~np.asarray(more.success_B)
        assert np.all(np.asarray(more.loss_B)[robust] >= np.asarray(fewer.loss_B)[robust] - 1e-6)
    assert np.any(np.asarray(runs[-1].loss_B) > np.asarray(runs[0].loss_B) + 1e-4)
    assert 0 < np.mean(runs[0].success_B) < 1  # neither trivially robust nor all fooled


@pytest.mark.parametrize("loss, norm", [("ce", "linf"), ("dlr", "linf"), ("ce", "l2")])
def test_apgd_best_loss_never_decreases(loss, norm):
    variables, (x, y) = _mlp(seed=7), _batch(seed=8)
    eps = 0.05 if norm == "linf" else 0.3
    result = attacks.apgd(
        mlp_apply, variables, x, y, jax.random.PRNGKey(3), eps=eps, loss=loss, norm=norm,
        steps=40, restarts=2,
    )  # fmt: skip
    trace_RTB = np.asarray(result.best_loss_RTB)
    assert trace_RTB.shape == (2, 41, len(y))
    assert np.all(np.diff(trace_RTB, axis=1) >= 0)
    assert np.any(trace_RTB[:, -1] > trace_RTB[:, 0])  # it did climb
    # An example the attack could not fool ends at the best point of its best restart.
    robust = ~np.asarray(result.success_B)
    assert robust.any()
    np.testing.assert_allclose(
        np.asarray(result.loss_B)[robust], trace_RTB[:, -1].max(0)[robust], rtol=1e-5
    )


def test_apgd_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (steps of max(prev - 0.03, 0.06))
    assert attacks.apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_loss_against_numpy_and_its_class_count():
    rng = np.random.RandomState(9)
    z, y = rng.randn(10, 5), rng.randint(0, 5, 10)
    s = np.sort(z, 1)[:, ::-1]
    other = np.where(np.eye(5)[y] > 0, -np.inf, z).max(1)
    expected = -(z[np.arange(10), y] - other) / (s[:, 0] - s[:, 2] + 1e-12)
    got = attacks.dlr_loss(jnp.asarray(z, jnp.float32), jnp.asarray(y))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="at least 3 classes"):
        attacks.dlr_loss(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32))


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "pgdd", "eps": 0.1}, "valid values: fgsm, pgd, pgd_l2, apgd_ce, apgd_dlr"),
        ({"name": "pgd", "eps": 0.0}, "eps = 0.0 is outside the input range"),
        ({"name": "pgd", "eps": -0.1}, "needs eps in (0, 1)"),
        ({"name": "fgsm", "eps": 1.0}, "needs eps in (0, 1)"),
        ({"name": "pgd_l2", "eps": float("nan")}, "needs eps > 0"),
        ({"name": "pgd", "eps": 0.1, "steps": 0}, "steps must be an integer >= 1"),
        ({"name": "pgd", "eps": 0.1, "restarts": 0}, "restarts must be an integer >= 1"),
        ({"name": "apgd_ce", "eps": 0.1, "step_size": 0.1}, "chooses its own"),
        ({"name": "pgd", "eps": 0.1, "epsilon": 1}, "valid keys: name, eps"),
    ],
)
def test_bad_attack_settings_are_one_line_naming_the_setting(entry, message):
    with pytest.raises(ConfigError) as e:
        attacks.parse_attack(entry, "attack.attacks[0]")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "attack.attacks[0]" in str(e.value)


def test_attacks_refuse_token_ids_a_huge_l2_eps_and_dlr_on_two_classes():
    tokens = DatasetInfo("mr", 2, (64,), {"test": 10}, input_kind="tokens")
    with pytest.raises(ConfigError, match="input_kind 'tokens'") as e:
        attacks.check_inputs(attacks.parse_attack({"name": "pgd", "eps": 0.1}), tokens, "--attack")
    assert "--attack = pgd" in str(e.value)
    images = DatasetInfo("digits", 2, (8, 8, 1), {"test": 10})
    with pytest.raises(ConfigError, match=r"needs eps in \(0, 8\)"):
        attacks.check_inputs(attacks.parse_attack({"name": "pgd_l2", "eps": 8.0}), images)
    with pytest.raises(ConfigError, match="valid attacks here: fgsm, pgd, pgd_l2, apgd_ce"):
        attacks.check_inputs(attacks.parse_attack({"name": "apgd_dlr", "eps": 0.1}), images)


# ------------------------------------------------------------ foolbox reference (fixture)


def test_pgd_agrees_with_foolbox_linf_pgd():
    # tests/fixtures/make_foolbox_reference.py ran foolbox 3.3.4's LinfPGD (no random
    # start: deterministic) on this model and batch; foolbox is not a dependency.
    ref = np.load(os.path.join(FIXTURES, "foolbox_reference.npz"))
    variables = {k: jnp.asarray(ref[k]) for k in ("W1", "b1", "W2", "b2")}
    x, y = jnp.asarray(ref["x"]), jnp.asarray(ref["y"])
    for i, eps in enumerate(ref["epsilons"]):
        result = attacks.pgd(
            mlp_apply, variables, x, y, jax.random.PRNGKey(0), eps=float(eps),
            steps=int(ref["steps"]), step_size=float(ref["rel_stepsize"] * eps),
            random_init=False,
        )  # fmt: skip
        robust = 1.0 - np.asarray(result.success_B).mean()
        assert abs(robust - ref["robust_accuracy"][i]) <= 0.02, (eps, robust)
        same = np.abs(np.asarray(result.x_adv) - ref["x_adv"][i]).max(axis=(1, 2, 3)) < 1e-4
        assert same.mean() >= 0.95, (eps, same.mean())


# ------------------------------------------------------- trained model, config and CLI


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A tiny MLP trained on digits through the CLI, with robust accuracy in its config."""
    workdir = str(tmp_path_factory.mktemp("attacks") / "run")
    extra = {
        "teacher.train.epochs": 10,
        "teacher.train.learning_rate": 1e-2,
        "teacher.train.translate": 0,
        "attack.attacks": [{"name": "pgd", "eps": 0.1, "steps": 10}],
    }
    overrides = [f"--config.{o}" for o in tiny_overrides(data_dir, **extra)]
    assert main(["train", "--workdir", workdir, *overrides]) == 0
    return workdir


def test_training_with_an_attack_config_reports_robust_accuracy(trained):
    result = json.loads(open(os.path.join(trained, "eval.json")).read())
    (robust,) = result["robust"]
    assert robust["attack"] == "pgd" and robust["eps"] == 0.1 and robust["steps"] == 10
    assert robust["step_size"] == pytest.approx(0.025) and robust["restarts"] == 1
    assert robust["clean_accuracy"] == pytest.approx(result["accuracy"])
    assert robust["count"] == result["count"] == 400
    # An undefended model loses much of its accuracy at eps = 0.1 (1/10 of the pixel range).
    assert robust["robust_accuracy"] <= robust["clean_accuracy"] - 0.2
    assert result["accuracy"] > 0.7


def test_robust_accuracy_over_a_split(trained, data_dir):
    from distill_jax.data import load_split
    from distill_jax.train.loop import load_teacher

    run = load_teacher(trained, what="run")
    split = load_split("digits", "test", data_dir)
    out = {}
    for name, eps in (("fgsm", 0.1), ("pgd", 0.1), ("pgd", 0.02), ("apgd_ce", 0.1)):
        spec = attacks.parse_attack({"name": name, "eps": eps, "steps": 10})
        r = attacks.robust_accuracy(run.model.apply, run.variables, split, spec, batch_size=96)
        assert r["count"] == 400  # 5 batches, the last padded: every example once
        assert 0.0 <= r["robust_accuracy"] <= r["clean_accuracy"]
        out[(name, eps)] = r["robust_accuracy"]
    assert out[("pgd", 0.02)] > out[("pgd", 0.1)]  # a larger ball is no safer
    assert out[("pgd", 0.1)] <= out[("fgsm", 0.1)] + 0.02  # iterating helps (or ties)


def test_evaluate_attack_adds_robust_accuracy_to_the_report(trained, capsys):
    args = ["evaluate", "--workdir", trained, "--attack", "fgsm,pgd", "--attack", "apgd_dlr"]
    assert main([*args, "--eps", "0.05", "--steps", "5", "--restarts", "2"]) == 0
    out = capsys.readouterr().out
    assert "robust_accuracy[fgsm]" in out and "robust_accuracy[apgd_dlr]" in out
    assert "eps=0.05" in out and "steps=5" in out
    evaluated = json.loads(open(os.path.join(trained, "eval_test.json")).read())
    robust = {r["attack"]: r for r in evaluated["robust"]}
    assert list(robust) == ["fgsm", "pgd", "apgd_dlr"]
    assert robust["pgd"]["restarts"] == 2 and robust["apgd_dlr"]["loss"] == "dlr"
    assert robust["fgsm"] == {**robust["fgsm"], "eps": 0.05, "norm": "linf"}
    for r in robust.values():
        assert r["clean_accuracy"] == pytest.approx(evaluated["accuracy"])
        assert r["robust_accuracy"] <= r["clean_accuracy"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--attack", "pgdx", "--eps", "0.1"], "attack 'pgdx' is not valid; valid values: fgsm"),
        (["--attack", "pgd", "--eps", "1.5"], "--attack pgd eps = 1.5 is outside the input"),
        (["--attack", "pgd", "--eps", "0"], "needs eps in (0, 1)"),
        (["--attack", "pgd", "--eps", "0.1", "--steps", "0"], "steps must be an integer >= 1"),
        (["--attack", "pgd", "--eps", "0.1", "--restarts", "0"], "restarts must be an integer"),
        (["--attack", "pgd"], "needs --eps"),
        (["--eps", "0.1"], "add --attack"),
    ],
)
def test_evaluate_bad_attack_is_one_line_and_writes_nothing(trained, capsys, flags, message):
    target = os.path.join(trained, "eval_validation.json")
    assert main(["evaluate", "--workdir", trained, "--split", "validation", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not os.path.exists(target)


def test_config_attacks_are_checked_against_the_data_before_anything_is_written(
    data_dir, tmp_path, capsys
):
    workdir = tmp_path / "w"
    extra = {"attack.attacks": [{"name": "pgd_l2", "eps": 9.0}]}  # digits: 8x8, diameter 8
    overrides = [f"--config.{o}" for o in tiny_overrides(data_dir, **extra)]
    assert main(["train", "--workdir", str(workdir), *overrides]) == 2
    err = capsys.readouterr().err
    assert "attack.attacks[0] eps = 9 is outside the input range" in err
    assert not workdir.exists()
