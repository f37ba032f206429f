"""TensorBoard event files: every run writes them beside metrics.jsonl, and they say the
same thing. Read back with an independent reader of the TFRecord framing (CRC-checked) and
the Event protocol buffer, applying TensorBoard's purge-step rule."""

import glob
import json
import os
import struct

import numpy as np
import pytest

from distill_jax.train.loop import fit, load_teacher


def _masked_crc(data: bytes) -> int:
    from tensorboardX.crc32c import crc32c

    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: str):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == _masked_crc(header)
        body = data[pos + 12 : pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == (
            _masked_crc(body)
        )
        pos += 16 + length
        yield body


def read_scalars(workdir: str) -> dict[str, dict[int, float]]:
    """tag -> {step: value} as TensorBoard shows it: files in name order, and a session
    start at step S hides what earlier files logged at steps >= S."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for body in _records(path):
            event = Event.FromString(body)
            if event.session_log.status == SessionLog.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _assert_mirrors(scalars: dict, records: list[dict]) -> None:
    """Every number of metrics.jsonl is in the events, at its step, and nothing else is."""
    expected: dict[str, dict[int, float]] = {}
    for r in records:
        for key, value in r.items():
            if key in ("step", "epoch", "split"):
                continue
            values = value if isinstance(value, list) else [value]
            for i, v in enumerate(values):
                tag = f"{r['split']}/{key}" + (f"/{i}" if isinstance(value, list) else "")
                expected.setdefault(tag, {})[r["step"]] = v
    logged = {t: v for t, v in scalars.items() if not t.startswith("test/")}
    assert logged.keys() == expected.keys()
    for tag, values in expected.items():
        assert logged[tag].keys() == values.keys(), tag
        for step, v in values.items():
            np.testing.assert_allclose(logged[tag][step], v, rtol=1e-6, err_msg=tag)


def test_events_mirror_the_metrics_log(tiny_config, tmp_path):
    config = tiny_config(**{"distill.losses": {"kd": {"weight": 1.0}}, "distill.alpha": 0.5})
    teacher = fit(config, str(tmp_path / "teacher"), role="teacher")
    result = fit(config, str(tmp_path / "student"), teacher=load_teacher(str(tmp_path / "teacher")))
    for run in (teacher, result):
        scalars = read_scalars(run.workdir)
        _assert_mirrors(scalars, _metrics(run.workdir))
        assert scalars["test/accuracy"] == {run.steps: pytest.approx(run.test["accuracy"])}
        assert all(v > 0 for v in scalars["train/examples_per_sec"].values())
        assert {"validation/accuracy", "validation/nll", "validation/ece"} <= scalars.keys()
        assert len(scalars["validation/accuracy"]) == 2  # two epochs
        # Counts are no curves; a model's size is, once.
        assert "test/count" not in scalars and "test/params" in scalars
    student = read_scalars(result.workdir)
    assert {"train/ce", "train/kd", "train/learning_rate", "train/loss"} <= student.keys()
    # The logged loss is the objective: alpha * CE + (the kd term's weight) * KD.
    for step, loss in student["train/loss"].items():
        want = 0.5 * student["train/ce"][step] + student["train/kd"][step]
        assert loss == pytest.approx(want, rel=1e-5)


def test_vmapped_students_log_each_validation_accuracy(tiny_config, tmp_path):
    config = tiny_config(**{"vmap.students": 2})
    fit(config, str(tmp_path / "alone"), role="student")
    scalars = read_scalars(str(tmp_path / "alone"))
    _assert_mirrors(scalars, _metrics(str(tmp_path / "alone")))
    assert {"validation/accuracy_students/0", "validation/accuracy_students/1"} <= set(scalars)


def test_a_resumed_run_hides_what_the_crashed_attempt_logged_after_its_checkpoint(
    tiny_config, tmp_path, monkeypatch
):
    """Crash at step 17 (logged up to step 15, checkpoint at 10), resume: TensorBoard
    shows one value per step, the resumed run's, exactly what metrics.jsonl keeps."""
    from distill_jax import faults

    config = tiny_config(**{"log.every_steps": 5, "checkpoint.every_steps": 10})
    workdir = str(tmp_path / "run")

    def crash(event, step):
        if event == "sigkill_at_step" and step == 17:
            raise RuntimeError("crash")

    monkeypatch.setattr(faults, "inject", crash)
    with pytest.raises(RuntimeError, match="crash"):
        fit(config, workdir, role="student")
    first = read_scalars(workdir)
    assert max(first["train/loss"]) == 15
    monkeypatch.undo()
    result = fit(config, workdir, role="student")
    assert result.start_step == 10
    scalars = read_scalars(workdir)
    _assert_mirrors(scalars, _metrics(workdir))
    files = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
    assert len(files) == 2  # the crashed attempt's file is kept; its steps > 10 are hidden
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    starts = [Event.FromString(b) for b in _records(files[1])]
    assert [e.step for e in starts if e.session_log.status == SessionLog.START] == [11]


def test_tensorboard_off_writes_no_event_files(tiny_config, tmp_path):
    fit(tiny_config(**{"log.tensorboard": False}), str(tmp_path / "run"), role="student")
    assert not glob.glob(str(tmp_path / "run" / "events.*"))
    assert os.path.exists(tmp_path / "run" / "metrics.jsonl")
