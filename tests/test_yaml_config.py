"""One reader and one error format for every YAML file a person writes: the line file, the rig file and the
training config all say ``<file>:<line>: <key>: <problem>``, refuse repeated keys and read ``1e-3`` as a
number (``rtvp_edge/yaml_config.py``)."""

from __future__ import annotations

import pytest
from pydantic import Field

from rtvp_edge.config import load_line_config
from rtvp_edge.rig import load_rig_config
from rtvp_edge.strict import StrictModel
from rtvp_edge.yaml_config import ConfigError, load_yaml_model, validate_mapping
from tests.test_train_helpers import DoubleConfig
from training.config import load_config


def load_training(path):
    return load_config(path, model_config_cls=DoubleConfig)


# (loader, a valid file with a typo'd key on line 3: the key path reported)
FILES = {
    "line": (load_line_config, "line:\n  site: s\n  statoin: st1\n", "line.statoin"),
    "rig": (load_rig_config, "seed: 1\nshapes: [jar]\nnoise_sigmaa: 2\n", "noise_sigmaa"),
    "training": (load_training, "name: x\noptim:\n  lrr: 0.1\n", "optim.lrr"),
}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_unknown_key_names_file_line_and_key(tmp_path, kind):
    load, text, key = FILES[kind]
    p = tmp_path / f"{kind}.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert f"{p}:3: {key}: unknown key (check the spelling" in str(e.value)


@pytest.mark.parametrize("kind", sorted(FILES))
def test_repeated_key_and_bad_yaml_name_the_line(tmp_path, kind):
    load, _, _ = FILES[kind]
    p = tmp_path / f"{kind}.yaml"
    p.write_text("seed: 1\nname: a\nname: b\n")
    with pytest.raises(ConfigError, match=r"\.yaml:3: key 'name' repeated \(first on line 2\)"):
        load(p)
    p.write_text("seed: 1\nname: [a\n")
    with pytest.raises(ConfigError, match=r"\.yaml:3: not valid YAML"):
        load(p)


class _Section(StrictModel):
    rate: float = Field(1.0, gt=0)
    count: int = 1
    enabled: bool = False


class _File(StrictModel):
    section: _Section = _Section()
    sections: list[_Section] = []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("section:\n  rate: 1e-3\n", None),  # YAML 1.1 reads 1e-3 as a string: here it is a number
        ("section:\n  rate: -1\n", "f.yaml:2: section.rate: Input should be greater than 0 (got -1)"),
        ("section:\n  count: '3'\n", "f.yaml:2: section.count: Input should be a valid integer (got '3')"),
        ("section:\n  count: 2.5\n", "f.yaml:2: section.count: Input should be a valid integer (got 2.5)"),
        ("section:\n  rate: yes\n", "f.yaml:2: section.rate: Input should be a valid number (got True)"),
        ("section:\n  enabled: 1\n", "f.yaml:2: section.enabled: Input should be a valid boolean (got 1)"),
        ("section: 3\n", "f.yaml:1: section: expected a mapping of keys (got 3)"),
        ("sections:\n  - {rate: 1}\n  - {rat: 2}\n", "f.yaml:3: sections.1.rat: unknown key (check the spelling; valid keys here: count, enabled, rate)"),
        ("- a\n", "f.yaml:1: (top level): expected a mapping of keys, got list"),
    ],
)  # fmt: skip
def test_strict_reading_and_the_format(tmp_path, text, expected):
    p = tmp_path / "f.yaml"
    p.write_text(text)
    if expected is None:
        assert load_yaml_model(_File, p).section.rate == 1e-3
        return
    with pytest.raises(ConfigError) as e:
        load_yaml_model(_File, p)
    assert str(e.value) == f"{tmp_path}/{expected}"


def test_a_mapping_without_a_file_has_the_same_format_without_lines():
    with pytest.raises(ConfigError) as e:
        validate_mapping(_File, {"section": {"rate": 0}}, "ckpt.pt", prefix=("stored",))
    assert str(e.value) == "ckpt.pt: stored.section.rate: Input should be greater than 0 (got 0)"


def test_line_section_missing_ids_is_an_error_not_a_traceback(tmp_path):
    # StationIds takes positional ids; pydantic calls that __init__ with the file's keys (was a TypeError)
    p = tmp_path / "line.yaml"
    p.write_text("line:\n  site: s\n")
    with pytest.raises(ConfigError) as e:
        load_line_config(p)
    lines = str(e.value).splitlines()
    assert f"{p}:2: line.line: required key is missing" in lines
    assert f"{p}:2: line.station: required key is missing" in lines


def test_a_bare_list_is_read_as_the_value_of_a_key_with_its_lines():
    from rtvp_edge.yaml_config import list_as_key, node_at, parse_yaml

    data, root = list_as_key(*parse_yaml("- 1\n- 2\n", "f.yaml"), "items")
    assert data == {"items": [1, 2]}
    node, reached = node_at(root, ("items", 1))
    assert reached and node.start_mark.line == 1  # the second item, on the file's second line
    mapping = parse_yaml("a: 1\n", "g.yaml")
    assert list_as_key(*mapping, "items") == mapping  # not a list: unchanged
