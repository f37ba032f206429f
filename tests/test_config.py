"""Config loading, overrides and the validation messages."""

import json

import pytest

from distill_jax.config import default_config, from_dict, load_config
from distill_jax.errors import ConfigError


def test_defaults_validate():
    config = load_config()
    assert config.distill.alpha == default_config()["distill"]["alpha"]


def test_experiment_file_and_overrides():
    config = load_config(
        "experiments/mnist_kd/config.py",
        ["student.train.epochs=3", "distill.temperature=20", "data.name=digits"],
    )
    assert config.student.train.epochs == 3
    assert config.distill.temperature == 20.0 and isinstance(config.distill.temperature, float)
    assert config.data.name == "digits"
    assert list(config.teacher.model.hidden) == [1200, 1200]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("studnt.train.epochs=3", "did you mean 'student'"),
        ("student.train.epoch=3", "did you mean 'epochs'"),
        ("teacher.model.dropot=0.1", "did you mean 'dropout'"),
        ("teacher.model.name='mlpp'", "valid models: bert, bilstm, bilstm_tagger, cnn, llama"),
        ("student.train.optimizer='sgdd'", "valid values: sgd, adamw, adam"),
        ("distill.alpha=1.5", "distill.alpha must be in [0, 1]"),
        ("distill.temperature=0", "distill.temperature must be > 0"),
        ("student.train.epochs='ten'", "student.train.epochs must be an integer"),
        ("parallel.strategy='pjit'", "valid values: jit, pmap"),
        ("student.train=3", "student.train is a section"),
        ("data.length_bucket=-8", "data.length_bucket must be >= 0"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)


def test_length_buckets_need_batches_cut_on_the_host():
    with pytest.raises(ConfigError, match="'host' or 'auto', not 'device'"):
        load_config(None, ["data.length_bucket=16", "data.pipeline='device'"])
    assert load_config(None, ["data.length_bucket=16"]).data.length_bucket == 16


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("def get_config():\n    return {'distil': {'alpha': 0.5}}\n")
    with pytest.raises(ConfigError, match="did you mean 'distill'"):
        load_config(path)


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.py")
    path = tmp_path / "cfg.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config(path)


def test_json_round_trip(tmp_path):
    config = load_config(None, ["seed=3"])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.to_dict()))
    assert from_dict(json.loads(path.read_text())).to_dict() == config.to_dict()


def test_config_is_locked():
    config = load_config()
    with pytest.raises(AttributeError):
        config.distill.alpah = 0.3
