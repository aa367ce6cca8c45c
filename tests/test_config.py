"""Line configuration: the reference files validate; unknown keys, wrong types, missing files and
inconsistent cameras are refused with the file, the line and the key; the CLI exits 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_backends import make_toy_bundle

from rtvp_edge.config import ConfigError, LineConfig, classify_source, load_line_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("cfg") / "bundle")


LINE = """\
line:
  site: s1
  line: l1
  station: st1
cameras:
  - id: A
    source: sim
    view: 0
  - id: B
    source: sim
    view: 1
assembly:
  views_per_part: 2
  timeout_s: 1.5
model:
  bundle: {bundle}
  backend: onnxruntime
verdict:
  rules:
    - class: oil
      min_score: 0.5
"""


def write(tmp_path: Path, text: str, name: str = "line.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_line_config(path)
    return str(e.value)


def test_valid_line_file(tmp_path, bundle):
    cfg = load_line_config(write(tmp_path, LINE.format(bundle=bundle)))
    assert cfg.model.bundle == str(bundle.resolve())
    assert [c.id for c in cfg.cameras] == ["A", "B"]
    assert cfg.verdict.rules[0].class_name == "oil"
    assert cfg.cameras[0].overflow == "drop_oldest"


def test_relative_bundle_path_is_relative_to_the_line_file(tmp_path, bundle):
    sub = tmp_path / "conf"
    sub.mkdir()
    rel = Path("..") / bundle.relative_to(bundle.parents[1])
    (tmp_path / bundle.parent.name).symlink_to(bundle.parent)
    cfg = load_line_config(write(sub, LINE.format(bundle=rel)))
    assert Path(cfg.model.bundle).is_dir()


def test_unknown_key_names_file_line_and_key(tmp_path, bundle):
    text = LINE.format(bundle=bundle).replace("    view: 1\n", "    view: 1\n    overflw: block\n")
    p = write(tmp_path, text)
    msg = error_of(p)
    assert f"{p}:12: cameras.1.overflw: unknown key" in msg


def test_wrong_type_names_file_line_and_key(tmp_path, bundle):
    p = write(tmp_path, LINE.format(bundle=bundle).replace("timeout_s: 1.5", "timeout_s: soon"))
    msg = error_of(p)
    assert f"{p}:14: assembly.timeout_s:" in msg and "'soon'" in msg


def test_bad_enum_value(tmp_path, bundle):
    text = LINE.format(bundle=bundle).replace("backend: onnxruntime", "backend: tflite")
    msg = error_of(write(tmp_path, text))
    assert ":17: model.backend:" in msg and "openvino" in msg


def test_missing_bundle_names_file_line_and_key(tmp_path):
    p = write(tmp_path, LINE.format(bundle="no/such/bundle"))
    msg = error_of(p)
    assert f"{p}:16: model.bundle: bundle directory not found" in msg
    assert str(tmp_path / "no/such/bundle") in msg


def test_missing_required_section(tmp_path, bundle):
    text = LINE.format(bundle=bundle).replace("line:\n  site: s1\n  line: l1\n  station: st1\n", "")
    msg = error_of(write(tmp_path, text))
    assert "line: required key is missing" in msg


def test_missing_replay_folder(tmp_path, bundle):
    p = write(
        tmp_path,
        LINE.format(bundle=bundle).replace("source: sim\n    view: 1", "source: recordings/B\n    view: 1"),
    )
    msg = error_of(p)
    assert f"{p}:10: cameras.1.source:" in msg and "recordings/B" in msg


def test_duplicate_key_is_refused(tmp_path, bundle):
    p = write(
        tmp_path,
        LINE.format(bundle=bundle).replace("  timeout_s: 1.5\n", "  timeout_s: 1.5\n  timeout_s: 2\n"),
    )
    msg = error_of(p)
    assert f"{p}:15: key 'timeout_s' repeated (first on line 14)" in msg


def test_inconsistent_cameras(tmp_path, bundle):
    msg = error_of(write(tmp_path, LINE.format(bundle=bundle).replace("view: 1", "view: 0")))
    assert "repeated: [0]" in msg
    msg = error_of(
        write(tmp_path, LINE.format(bundle=bundle).replace("views_per_part: 2", "views_per_part: 3"))
    )
    assert "2 cameras but assembly.views_per_part is 3" in msg


def test_invalid_yaml_and_missing_file(tmp_path):
    p = write(tmp_path, "line: [unclosed\n")
    assert f"{p}:2: not valid YAML" in error_of(p)
    assert "not found" in error_of(tmp_path / "nope.yaml")
    assert "expected a mapping" in error_of(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_plc_mode_needs_topic(tmp_path, bundle):
    text = LINE.format(bundle=bundle).replace(
        "  views_per_part: 2\n", "  views_per_part: 2\n  part_id: plc\n"
    )
    assert "plc_topic" in error_of(write(tmp_path, text))


@pytest.mark.parametrize("name", ["glass.yaml", "glass_real_cameras.yaml"])
def test_reference_line_files_validate(name, bundle):
    """The shipped line files are valid except for the bundle path, which the demo bundle fills."""
    path = ROOT / "line_config" / name
    data = yaml.safe_load(path.read_text())
    data["model"]["bundle"] = str(bundle)
    cfg = LineConfig.model_validate(data, context={"base_dir": path.parent})
    assert len(cfg.cameras) == cfg.assembly.views_per_part == 6


def test_source_kinds():
    assert classify_source("sim") == "sim"
    assert classify_source(0) == "usb" and classify_source("2") == "usb"
    assert classify_source("rtsp://10.0.0.1/s") == "url" and classify_source("http://x/y.mjpg") == "url"
    assert classify_source("v4l2src ! videoconvert ! appsink") == "gstreamer"
    assert classify_source("/no/such/file.mp4") == "video"


def test_cli_check_exit_code_2_without_traceback(tmp_path, bundle):
    text = LINE.format(bundle=bundle).replace("station: st1", "station: st1\n  colour: red")
    p = write(tmp_path, text)
    r = subprocess.run(
        [sys.executable, "-m", "rtvp_edge", "check", "--line", str(p)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert f"{p}:5: line.colour: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_check_ok(tmp_path, bundle):
    p = write(tmp_path, LINE.format(bundle=bundle))
    r = subprocess.run(
        [sys.executable, "-m", "rtvp_edge", "check", "--line", str(p)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "golden self-test passed" in r.stdout


def test_class_unknown_to_the_bundle_is_a_config_error(tmp_path, bundle):
    text = LINE.format(bundle=bundle) + "detection:\n  class_thresholds: {bubbel: 0.5}\n"
    p = write(tmp_path, text)
    r = subprocess.run(
        [sys.executable, "-m", "rtvp_edge", "check", "--line", str(p)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{p}: detection.class_thresholds: class 'bubbel' is not in the bundle's vocabulary" in r.stderr


def test_sim_cameras_share_one_resolution(tmp_path, bundle):
    text = (
        LINE.format(bundle=bundle)
        .replace("    view: 1\n", "    view: 1\n    resolution: {width: 640, height: 480}\n")
        .replace("    view: 0\n", "    view: 0\n    resolution: {width: 700, height: 820}\n")
    )
    assert "renders one image size" in error_of(write(tmp_path, text))


def test_camera_crop_is_read_and_a_bad_one_names_the_key(tmp_path, bundle):
    good = LINE.replace("    view: 0\n", "    view: 0\n    crop: [100, 208, 600, 784]\n", 1).format(
        bundle=bundle
    )
    cfg = load_line_config(write(tmp_path, good))
    assert cfg.cameras[0].crop == (100, 208, 600, 784) and cfg.cameras[1].crop is None
    bad = LINE.replace("    view: 0\n", "    view: 0\n    crop: [600, 208, 100, 784]\n", 1).format(
        bundle=bundle
    )
    msg = error_of(write(tmp_path, bad, "bad.yaml"))
    assert "bad.yaml" in msg and "crop" in msg
