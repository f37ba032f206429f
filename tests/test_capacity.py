"""How big should the student be: early-stopped teachers (`checkpoint.keep_epochs`,
`teacher.checkpoint = "epoch:N"`), teacher-assistant chains and the capacity sweep."""

import os

import jax
import numpy as np
import pytest
from conftest import tiny_overrides

from distill_jax import capacity as capacity_lib
from distill_jax.assistants import student_config
from distill_jax.config import load_config
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.train.checkpointing import Checkpointer
from distill_jax.train.loop import fit, load_teacher


@pytest.fixture(scope="module")
def teacher_run(data_dir, tmp_path_factory):
    """A 4-epoch teacher that keeps the ends of epochs 1 and 3 for good (keep = 1 latest)."""
    root = tmp_path_factory.mktemp("capacity")
    config = load_config(
        None,
        tiny_overrides(
            data_dir,
            **{
                "teacher.train.epochs": 4,
                "checkpoint.keep": 1,
                "checkpoint.keep_epochs": [1, 3, 9],
                "eval.every_epochs": 2,
            },
        ),
    )
    result = fit(config, str(root / "teacher"), role="teacher")
    return str(root / "teacher"), result


def test_kept_epochs_survive_and_load_as_early_stopped_teachers(teacher_run):
    workdir, result = teacher_run
    per_epoch = result.steps // 4
    steps = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).all_steps()
    # Epochs 1 and 3 are kept besides the latest (keep = 1) and the best; 9 is never reached.
    assert {per_epoch, 3 * per_epoch, 4 * per_epoch} <= set(steps)
    # Epochs 1 and 3 were validated although eval.every_epochs = 2.
    validated = [r["step"] for r in result.history]
    assert validated == [per_epoch, 2 * per_epoch, 3 * per_epoch, 4 * per_epoch]
    early = load_teacher(workdir, "epoch:1")
    latest = load_teacher(workdir, "latest")
    assert early.identity["step"] == per_epoch and early.identity["checkpoint"] == "epoch:1"
    assert latest.identity["step"] == 4 * per_epoch and "checkpoint" not in latest.identity
    assert early.identity["sha256"] != latest.identity["sha256"]
    # Its weights are the ones saved at that step, not the latest.
    raw, _ = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).restore(per_epoch)
    np.testing.assert_array_equal(
        jax.tree.leaves(early.variables["params"])[0], jax.tree.leaves(raw["params"])[0]
    )


def test_an_epoch_that_was_not_kept_is_refused_with_the_kept_ones(teacher_run):
    workdir, _ = teacher_run
    kept = r"no checkpoint at the end of epoch 2 .*epochs \[1, 3, 4\].*keep_epochs=\[2\]"
    with pytest.raises(CheckpointError, match=kept):
        load_teacher(workdir, "epoch:2")


@pytest.mark.parametrize("value", ["epoch:0", "epoch:x", "epoch", "bets"])
def test_bad_teacher_checkpoint_names_are_one_line(data_dir, value):
    valid = r"teacher.checkpoint = .* valid values: latest, best, or \"epoch:N\""
    with pytest.raises(ConfigError, match=valid):
        load_config(None, tiny_overrides(data_dir, **{"teacher.checkpoint": value}))


@pytest.mark.parametrize("value", [[0], ["3"], [True], [2.5]])
def test_bad_keep_epochs_are_one_line(data_dir, value):
    with pytest.raises(ConfigError, match="checkpoint.keep_epochs lists epochs"):
        load_config(None, tiny_overrides(data_dir, **{"checkpoint.keep_epochs": value}))


# --------------------------------------------------------------------------- analysis


def _rec(params, accs, latency=None):
    a = np.asarray(accs, np.float64)
    return {
        "accuracy": list(accs),
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)),
        "params": params,
        "latency_ms_per_example": params / 1e6 if latency is None else latency,
    }


def test_pareto_front_matches_a_brute_force_definition():
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = [(float(c), float(a)) for c, a in rng.integers(0, 6, (12, 2))]
        got = capacity_lib.pareto_front(pts)
        for p, on in zip(pts, got, strict=True):
            better = [q for q in pts if q[0] <= p[0] and q[1] >= p[1] and q != p]
            assert on == (not better)


def test_analysis_reads_the_answers_from_the_measurements():
    results = {
        "s": {"alone": _rec(10, [0.80, 0.81, 0.79]), "kd:t": _rec(10, [0.85, 0.86, 0.84])},
        "m": {"alone": _rec(100, [0.90, 0.91, 0.89]), "kd:t": _rec(100, [0.93, 0.94, 0.92])},
        "l": {"alone": _rec(1000, [0.95, 0.96, 0.94]), "kd:t": _rec(1000, [0.955, 0.94, 0.95])},
        "xl": {"alone": _rec(3000, [0.96, 0.95, 0.97]), "kd:t": _rec(3000, [0.96, 0.97, 0.95])},
    }
    a = capacity_lib.analyse(results, 0.955, within=1.0, distilled="kd:t")
    # kd gains: s +5 (helps), m +3 (helps), l -0.17, xl 0: it stops helping at "l".
    assert a["gains"]["kd:t"]["s"]["helps"] and a["gains"]["kd:t"]["m"]["helps"]
    assert not a["gains"]["kd:t"]["l"]["helps"] and not a["gains"]["kd:t"]["l"]["hurts"]
    assert a["stops_helping"] == "l" and a["helps_up_to"] == "m"
    # Independent: se = sqrt(sd_k^2/3 + sd_a^2/3) with sd = 0.01 for both at "s".
    assert a["gains"]["kd:t"]["s"]["se"] == pytest.approx(np.sqrt(2 * 0.01**2 / 3))
    # Within 1 point of 95.5 %: mean >= 94.5 %. kd at "m" is 93 %: not yet; "l" is.
    assert a["smallest_within"] == {
        "alone": ["l", "alone"],
        "kd:t": ["l", "kd:t"],
        "any": ["l", "alone"],
    }
    assert ["s", "kd:t"] in a["pareto"]["params"] and ["s", "alone"] not in a["pareto"]["params"]
    assert ["xl", "alone"] in a["pareto"]["params"]  # the most accurate (96.0 %)
    report = {"answers": a, "results": results, "within": 1.0, "reference": "t"}
    report["teachers"] = {"t": {"accuracy": 0.955}}
    text = "\n".join(capacity_lib.answer_lines(report))
    assert "at `s`, `m`; not at `l` (-0.17 ± 0.73), `xl` (+0.00 ± 0.82)" in text
    assert "stops helping at `l` (1,000 parameters): it helps up to `m` (100)" in text
    assert "at most 1 point(s) below the teacher (95.50 %): `l` (1,000 parameters, 95.00 %)" in text
    # A gain at every size: no stop; none anywhere: helps nowhere.
    for r in results.values():
        r["kd:t"] = _rec(r["alone"]["params"], [x + 0.05 for x in r["alone"]["accuracy"]])
    a = capacity_lib.analyse(results, 0.955, within=1.0, distilled="kd:t")
    assert a["stops_helping"] is None and a["helps_up_to"] == "xl"
    for r in results.values():  # 5 points worse everywhere: it hurts
        r["kd:t"] = _rec(r["alone"]["params"], [x - 0.05 for x in r["alone"]["accuracy"]])
    assert all(
        g["hurts"] and not g["helps"]
        for g in capacity_lib.analyse(results, 0.99, within=1.0, distilled="kd:t")["gains"][
            "kd:t"
        ].values()
    )
    for r in results.values():
        r["kd:t"] = dict(r["alone"])
    a = capacity_lib.analyse(results, 0.99, within=1.0, distilled="kd:t")
    assert a["stops_helping"] == "s" and a["helps_up_to"] is None
    assert a["smallest_within"]["any"] is None


# ------------------------------------------------------------------------- end to end


def test_capacity_trains_every_size_and_setting_and_resumes(data_dir, tmp_path, capsys):
    overrides = tiny_overrides(
        data_dir,
        **{
            "teacher.train.epochs": 3,
            "capacity.students": {
                "h4": {"name": "mlp", "hidden": [4]},
                "h16": {"name": "mlp", "hidden": [16]},
            },
            "capacity.teachers": {"teacher": "latest", "early": "epoch:1"},
            "capacity.assistants": {"ta": {"name": "mlp", "hidden": [24]}},
            "capacity.seeds": 2,
        },
    )
    config = load_config(None, overrides)
    workdir = str(tmp_path / "cap")
    report = capacity_lib.capacity(config, workdir)
    out = capsys.readouterr().out
    assert "[1/10] teacher" in out and "[2/10] assistant ta" in out and "[10/10] h" in out
    assert report["settings"] == ["alone", "kd:teacher", "kd:early", "ta:ta"]
    assert list(report["results"]) == ["h4", "h16"]
    for name, hidden in (("h4", 4), ("h16", 16)):
        for setting, rec in report["results"][name].items():
            assert (
                len(rec["accuracy"]) == 2
                and rec["params"] == 64 * hidden + hidden + 10 * hidden + 10
            )
            assert os.path.isdir(
                os.path.join(workdir, name, setting.replace(":", "_"), "checkpoints")
            )
        # One architecture, one latency: the fastest of its settings' measurements.
        rows = report["results"][name].values()
        for key in ("latency_ms_per_example", "latency_ms_batch1"):
            assert {r[key] for r in rows} == {min(r[f"{key}_run"] for r in rows)}
    early, full = report["teachers"]["early"], report["teachers"]["teacher"]
    assert early["checkpoint"] == "epoch:1" and early["step"] < full["step"]
    assert report["assistants"]["ta"]["params"] == 64 * 24 + 24 + 10 * 24 + 10
    # The assistant was distilled from the full teacher and taught the ta rows.
    import json

    with open(os.path.join(workdir, "h4", "ta_ta", "config.json")) as f:
        assert "assistants" in json.load(f)["teacher"]["workdir"]
    for f in ("capacity.json", "capacity.md", "capacity.png"):
        assert os.path.getsize(os.path.join(workdir, f)) > 0
    md = open(os.path.join(workdir, "capacity.md")).read()
    assert (
        "| `h16` | 1,210 |" in md
        and "★" in md
        and "Smallest student at most 1 point(s) below" in md
    )
    # The same command again trains nothing (every run is finished) and keeps the times.
    logs = {
        p: open(p).read()
        for p in (os.path.join(r["workdir"], "metrics.jsonl") for r in _records(report))
    }
    report2 = capacity_lib.capacity(config, workdir, verbose=False)
    assert {p: open(p).read() for p in logs} == logs
    for before, after in zip(_records(report), _records(report2), strict=True):
        assert after["accuracy"] == before["accuracy"] and after["seconds"] == before["seconds"]


def test_capacity_distils_from_cached_teachers_on_a_transfer_set(data_dir, tmp_path, capsys):
    """`capacity.cache_views`: each teacher labels the distilled rows' data once; the
    `capacity.distilled` overrides (here: the augmentation the views come from) reach the
    distilled rows only; `vmap.by` is kept."""
    import json

    overrides = tiny_overrides(
        data_dir,
        **{
            "capacity.students": {"h8": {"name": "mlp", "hidden": [8]}},
            "capacity.seeds": 2,
            "capacity.cache_views": 2,
            "capacity.distilled": {"student": {"train": {"translate": 2}}},
            "vmap.by": "map",
        },
    )
    config = load_config(None, overrides)
    workdir = str(tmp_path / "cap")
    report = capacity_lib.capacity(config, workdir)
    out = capsys.readouterr().out
    assert "[2/4] teacher cache teacher (2 view(s) per example): done" in out
    cache = os.path.join(workdir, "caches", "teacher")
    with open(os.path.join(cache, "cache.json")) as f:
        meta = json.load(f)
    assert meta["views"] == 2 and meta["dataset"]["split"] == "train"

    def run_config(setting):
        with open(os.path.join(workdir, "h8", setting, "config.json")) as f:
            return json.load(f)

    alone, kd = run_config("alone"), run_config("kd_teacher")
    assert alone["distill"] is None and alone["train"]["translate"] == 0
    assert kd["distill"]["cache"] == cache and kd["train"]["translate"] == 2
    assert len(kd["students"]) == 2
    assert student_config(config, {"name": "mlp"}, 2).vmap.by == "map"
    assert report["cache_views"] == 2 and report["distilled"] == {
        "student": {"train": {"translate": 2}}
    }
    md = open(os.path.join(workdir, "capacity.md")).read()
    assert "read each teacher's cached outputs (2 view(s) per example)" in md
    assert "`student.train.translate = 2`" in md
    # Resumed: the cache is reused, not rewritten.
    stamp = os.path.getmtime(os.path.join(cache, "cache.json"))
    capacity_lib.capacity(config, workdir, verbose=False)
    assert os.path.getmtime(os.path.join(cache, "cache.json")) == stamp


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"capacity.distilled": {"student": {"train": {"translat": 2}}}},
            r"capacity.distilled: unknown config key 'student.train.translat' "
            r"\(did you mean 'translate'\?\)",
        ),
        (
            {"capacity.distilled": {"student": {"train": {"translate": -1}}}},
            "capacity.distilled: student.train.translate",
        ),
        ({"capacity.distilled": {"capacity": {"seeds": 1}}}, "may not set the capacity"),
        ({"capacity.cache_views": -1}, r"capacity.cache_views must be an integer >= 0"),
        (
            {"capacity.cache_views": 2, "capacity.assistants": {"a": {"name": "mlp"}}},
            "assistant rows .* distil online: use one or the other",
        ),
    ],
)
def test_bad_capacity_transfer_settings_are_one_line(data_dir, extra, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, tiny_overrides(data_dir, **extra))
    assert "\n" not in str(e.value)


def _records(report):
    return [r for by_setting in report["results"].values() for r in by_setting.values()]


def test_capacity_refusals_are_one_line(data_dir, tmp_path):
    base = {"capacity.students": {"h4": {"name": "mlp", "hidden": [4]}}}
    config = load_config(None, tiny_overrides(data_dir, **base))
    with pytest.raises(ConfigError, match="unknown capacity student.*h5.*valid: h4"):
        capacity_lib.capacity(config, str(tmp_path / "a"), students=["h5"])
    empty = load_config(None, tiny_overrides(data_dir))
    with pytest.raises(ConfigError, match="capacity.students is empty"):
        capacity_lib.capacity(empty, str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    from distill_jax.cli import main

    args = ["capacity", "--workdir", str(tmp_path / "c"), "--students", "h4,h9"]
    assert main([*args, *(f"--config.{o}" for o in tiny_overrides(data_dir, **base))]) == 2
    assert not (tmp_path / "c").exists()


def test_distill_through_a_chain_of_assistants_from_the_cli(
    data_dir, teacher_run, tmp_path, capsys
):
    from distill_jax.cli import main

    teacher, _ = teacher_run
    workdir = tmp_path / "student"
    chain = [{"name": "mlp", "hidden": [24]}, {"name": "mlp", "hidden": [20]}]
    args = ["distill", "--workdir", str(workdir), "--teacher", teacher]
    overrides = tiny_overrides(data_dir, **{"distill.assistants": chain})
    assert main([*args, *(f"--config.{o}" for o in overrides)]) == 0
    out = capsys.readouterr().out
    assert "assistant 1/2 (mlp): test accuracy" in out and "assistant 2/2 (mlp)" in out
    import json

    first = json.load(open(workdir / "assistants" / "1_mlp" / "config.json"))
    second = json.load(open(workdir / "assistants" / "2_mlp" / "config.json"))
    student = json.load(open(workdir / "config.json"))
    # teacher -> assistant 1 -> assistant 2 -> student
    assert first["teacher"]["workdir"] == teacher and first["model"]["hidden"] == [24]
    assert second["teacher"]["workdir"] == str(workdir / "assistants" / "1_mlp")
    assert student["teacher"]["workdir"] == str(workdir / "assistants" / "2_mlp")
    # The same command resumes: nothing is retrained, nothing refused.
    before = (workdir / "metrics.jsonl").read_text()
    assert main([*args, *(f"--config.{o}" for o in overrides)]) == 0
    assert (workdir / "metrics.jsonl").read_text() == before
    # Without a teacher there is nothing to distil the first assistant from.
    assert (
        main(
            ["distill", "--workdir", str(tmp_path / "x"), "--teacher_cache", str(tmp_path)]
            + [f"--config.{o}" for o in overrides]
        )
        == 2
    )
    assert "distill.cache holds the teacher's outputs" in capsys.readouterr().err
