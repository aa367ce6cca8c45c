"""Every console script on a partial install: the command of a missing extra answers in one line which extra
to install, exit status 2, no traceback. The partial install is simulated in a subprocess by an import hook
that refuses the extra's packages, as a venv without them would."""

from __future__ import annotations

import configparser
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training.entrypoints import EXTRA_OF_MODULE

ROOT = Path(__file__).resolve().parents[1]

# Runs entry point ``module:function`` (what the console script runs) with the given modules missing.
RUNNER = textwrap.dedent(
    """
    import importlib, importlib.abc, sys
    missing = set(sys.argv[1].split(",")) - {""}

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == m or name.startswith(m + ".") for m in missing):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NotInstalled())
    module, function = sys.argv[2].split(":")
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    sys.exit(getattr(importlib.import_module(module), function)())
    """
)

NOT_IN_RUNTIME = sorted(EXTRA_OF_MODULE)  # the runtime install has none of the extras' packages


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def run_entry(entry: str, missing: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, ",".join(missing), entry, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "args", "extra"),
    [
        ("rtvp-data", ["generate", "--out", "{tmp}/d", "--containers", "1"], "train"),
        ("rtvp-train", ["--help"], "train"),
        ("rtvp-eval", ["--help"], "train"),
        ("rtvp-predict", ["--help"], "train"),
        ("rtvp-export", ["--help"], "export"),
    ],
)
def test_tool_on_the_runtime_install_names_its_extra(tmp_path, command, args, extra):
    entry = console_scripts()[command]
    r = run_entry(entry, NOT_IN_RUNTIME, *[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"{command}: error: needs the '{extra}' extra")
    assert f"pip install 'rtvp-edge[{extra}]'" in r.stderr


def test_export_without_tensorrt_names_the_tensorrt_extra_only_when_needed():
    # With everything but TensorRT installed, the export tool starts (its --help works) ...
    r = run_entry(console_scripts()["rtvp-export"], ["tensorrt", "cuda"], "--help")
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_a_missing_module_of_no_extra_keeps_its_traceback():
    # Not an extra's package: a broken install or a bug, which must not be dressed up as "install X".
    r = run_entry(console_scripts()["rtvp-train"], ["training.engine"], "--help")
    assert r.returncode != 0 and "Traceback" in r.stderr and "extra" not in r.stderr


def test_every_console_script_is_covered():
    assert set(console_scripts()) == {
        "rtvp-edge",
        "rtvp-data",
        "rtvp-train",
        "rtvp-eval",
        "rtvp-predict",
        "rtvp-export",
    }
    assert all(
        v.startswith(("training.entrypoints:", "export.entrypoints:"))
        for k, v in console_scripts().items()
        if k != "rtvp-edge"
    )


def test_demo_line_without_the_demo_extra_names_it(tmp_path):
    from test_backends import make_toy_bundle
    from test_pipeline_mqtt import rig_line

    from tests.mqtt_broker import free_port

    line = rig_line(tmp_path, make_toy_bundle(tmp_path / "bundle"), free_port(), n=0)
    line.write_text(line.read_text().replace("broker: external", "broker: embedded"))
    r = run_entry(console_scripts()["rtvp-edge"], ["amqtt"], "run", "--line", str(line), "--parts", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "mqtt.broker: embedded needs the 'demo' extra (amqtt is not installed)" in r.stderr
    assert "pip install 'rtvp-edge[demo]'" in r.stderr
