"""Configuration: paper defaults, YAML + dotted overrides, strict errors naming the key and the file."""

from __future__ import annotations

import pytest
import yaml

from tests.test_train_helpers import DoubleConfig
from training.config import ConfigError, TrainConfig, load_config, save_config, to_dict


def load(path=None, overrides=()):
    return load_config(path, list(overrides), model_config_cls=DoubleConfig)


def test_paper_defaults():
    cfg = load()
    assert isinstance(cfg, TrainConfig)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 2e-3, 0.025)
    assert isinstance(cfg.model, DoubleConfig)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "optim": {"lr": 0.01}, "model": {"img_size": 160}}))
    cfg = load(p, ["optim.lr=1e-3", "data.hsv=[0, 0.1, 0.2]", "model.width=8", "data.train_classes=[a, b]"])
    assert cfg.name == "x" and cfg.optim.lr == 1e-3 and cfg.model.img_size == 160 and cfg.model.width == 8
    assert cfg.data.hsv == (0.0, 0.1, 0.2) and cfg.data.train_classes == ["a", "b"]


def test_resolved_config_round_trips(tmp_path):
    cfg = load(None, ["optim.lr=0.5", "schedule.kind=linear", "model.width=4"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize(
    "content, needle",
    [
        ({"optim": {"lrr": 0.1}}, "unknown key optim.lrr"),
        ({"epochs": 3}, "unknown key epochs"),
        ({"model": {"widht": 3}}, "unknown key model.widht"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a number"),
        ({"data": {"batch_size": 2.5}}, "data.batch_size: expected an integer"),
        ({"ema": {"enabled": "yes"}}, "ema.enabled: expected true or false"),
        ({"schedule": {"kind": "exp"}}, "schedule.kind: expected one of"),
        ({"data": {"hsv": [0.1, 0.2]}}, "data.hsv: expected a list of 3 values"),
        ({"optim": 3}, "optim: expected a mapping"),
    ],
)
def test_bad_file_names_key_and_file(tmp_path, content, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as e:
        load(p)
    assert needle in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=1", "unknown key optim.lrr"),
        ("data.batch_size=big", "data.batch_size: expected an integer"),
        ("optim.lr", "not of the form dotted.key=value"),
        ("optim.lr.x=1", "optim.lr: expected a number"),
    ],
)
def test_bad_override_names_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load(None, [override])
    assert needle in str(e.value)
    assert "command line" in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load(p)
    p.write_text("optim: {lr: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(p)
