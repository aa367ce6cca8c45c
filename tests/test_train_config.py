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
    "content, line, needle",
    [
        ({"optim": {"lrr": 0.1}}, 2, "optim.lrr: unknown key (check the spelling; valid keys here: betas,"),
        ({"epochs": 3}, 1, "epochs: unknown key"),
        ({"model": {"widht": 3}}, 2, "model.widht: unknown key (check the spelling; valid keys here: extra,"),
        ({"optim": {"lr": "fast"}}, 2, "optim.lr: Input should be a valid number (got 'fast')"),
        ({"data": {"batch_size": 2.5}}, 2, "data.batch_size: Input should be a valid integer"),
        ({"ema": {"enabled": "yes"}}, 2, "ema.enabled: Input should be a valid boolean (got 'yes')"),
        ({"schedule": {"kind": "exp"}}, 2, "schedule.kind: Input should be 'cosine', 'linear' or 'constant'"),
        ({"data": {"hsv": [0.1, 0.2]}}, 3, "data.hsv.2: item missing (the list is too short)"),
        ({"optim": 3}, 1, "optim: expected a mapping of keys"),
        ({"data": {"crop": [5, 5, 1, 1]}}, 2, "data.crop: expected [x1, y1, x2, y2]"),
        ({"data": {"patch": [256, 100]}}, 2, "data.patch: expected [height, width], each a multiple of 32"),
        (
            {"data": {"patch_on_defect": 1.5}},
            2,
            "data.patch_on_defect: Input should be less than or equal to 1",
        ),
    ],
)
def test_bad_file_names_file_line_and_key(tmp_path, content, line, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as e:
        load(p)
    assert f"{p}:{line}: {needle}" in str(e.value)


def test_every_problem_of_a_file_is_listed_with_its_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\noptim:\n  lr: fast\ndata:\n  workers: two\n")
    with pytest.raises(ConfigError) as e:
        load(p)
    lines = str(e.value).splitlines()
    assert f"{p}:3: optim.lr: Input should be a valid number (got 'fast')" in lines
    assert f"{p}:5: data.workers: Input should be a valid integer (got 'two')" in lines
    assert len(lines) == 2


def test_repeated_key_is_an_error_naming_both_lines(tmp_path):
    p = tmp_path / "twice.yaml"
    p.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=rf"{p}:3: key 'lr' repeated \(first on line 2\)"):
        load(p)


def test_model_section_is_checked_by_the_model_config(tmp_path):
    # the real ModelConfig: its own checks (here: img_size a multiple of 32) name the file, line and key
    p = tmp_path / "model.yaml"
    p.write_text("model:\n  variant: rtvpnet_tiny\n  img_size: 100\n  edp: yes\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:3: model.img_size: each side must be a multiple of 32 and >= 64 (got 100)" in msg
    assert f"{p}:4: model.edp: " not in msg  # YAML 'yes' is a boolean: accepted
    cfg = load_config(None, ["model.img_size=[576, 512]", "model.rvp=false"])
    assert cfg.model.img_size == [576, 512] and cfg.model.rvp is False


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=1", "command line (optim.lrr=1): optim.lrr: unknown key"),
        ("data.batch_size=big", "command line (data.batch_size=big): data.batch_size: Input should be a valid integer"),
        ("optim.lr", "command line: override 'optim.lr' is not of the form dotted.key=value"),
        ("optim.lr.x=1", "command line (optim.lr.x=1): optim.lr: Input should be a valid number"),
        ("optim.lr=[1", "command line (optim.lr=[1):1: not valid YAML"),
    ],
)  # fmt: skip
def test_bad_override_names_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load(None, [override])
    assert needle in str(e.value)


def test_override_error_does_not_blame_the_file(tmp_path):
    p = tmp_path / "good.yaml"
    p.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load(p, ["optim.lr=slow"])
    assert (
        str(e.value) == "command line (optim.lr=slow): optim.lr: Input should be a valid number (got 'slow')"
    )


def test_training_cli_exits_2_with_file_line_and_key(tmp_path, capsys):
    from training.train import main

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nschedule:\n  epocs: 3\n")
    assert main(["--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rtvp-train: error: {p}:3: schedule.epocs: unknown key"), err
    assert "Traceback" not in err


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


def test_every_shipped_training_config_loads_and_its_windows_fit_the_input():
    from pathlib import Path

    from training.config import load_config as load_real  # the real ModelConfig

    files = sorted((Path(__file__).resolve().parents[1] / "training" / "configs").glob("*.yaml"))
    assert any(f.name == "glass_demo_fast.yaml" for f in files)
    for f in files:
        cfg = load_real(f)
        if cfg.data.patch:
            size = cfg.model.img_size
            hw = (size, size) if isinstance(size, int) else tuple(size)
            assert cfg.data.patch[0] <= hw[0] and cfg.data.patch[1] <= hw[1], f.name
