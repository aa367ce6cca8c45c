"""The messaging wing (``rtvp_edge/messaging``) holds every network client; the part logic and the line-file
schema do not import one. Checked in a subprocess where an import hook refuses paho (and the other protocol
libraries), as an install without them would: the modules must import and a line file must load."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETWORK_CLIENTS = ("paho", "asyncua", "pymodbus", "amqtt")

# Imports argv[2:] with the modules of argv[1] refused; loads a line file; prints which refused ones got in.
RUNNER = textwrap.dedent(
    """
    import importlib, importlib.abc, sys
    refused = sys.argv[1].split(",")

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == m or name.startswith(m + ".") for m in refused):
                raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)

    sys.meta_path.insert(0, Refuse())
    for module in sys.argv[2:]:
        importlib.import_module(module)
    if "rtvp_edge.config" in sys.argv[2:]:
        from rtvp_edge.config import load_line_config
        from rtvp_edge.messaging.plc import PlcConfig
        config = load_line_config("line_config/glass.yaml")
        plc = PlcConfig.model_validate({"reject_deadline_ms": 300, "modbus": {"port": 5020}})
        print("mqtt", config.mqtt.broker, config.mqtt.port, "plc", plc.modbus.port)
    print("loaded", sorted(m for m in sys.modules if m.split(".")[0] in refused))
    """
)


def run(refused: tuple[str, ...], *modules: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, ",".join(refused), *modules],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_part_logic_and_line_schema_load_without_network_clients():
    r = run(
        NETWORK_CLIENTS,
        "rtvp_edge.config",
        "rtvp_edge.assembler",
        "rtvp_edge.verdict",
        "rtvp_edge.pipeline",
        "rtvp_edge.messaging.config",
        "rtvp_edge.messaging.events",
        "rtvp_edge.messaging.outbox",
        "rtvp_edge.messaging.plc",
    )
    assert r.returncode == 0, r.stderr
    assert "mqtt embedded 18830 plc 5020" in r.stdout, r.stdout  # the mqtt: and plc: schemas validated
    assert "loaded []" in r.stdout, r.stdout


def test_the_hook_refuses_paho_where_the_wing_needs_it():
    # the control: the same hook does keep the MQTT client out, so the test above can fail
    for module in (
        "rtvp_edge.messaging.client",
        "rtvp_edge.messaging.publisher",
        "rtvp_edge.messaging.part_ids",
    ):
        r = run(("paho",), module)
        assert r.returncode != 0, (module, r.stdout)
        assert "No module named 'paho" in r.stderr and "refused by the test" in r.stderr, r.stderr


def test_no_module_outside_the_wing_imports_a_network_client():
    # a static check besides the runtime one: lazy imports inside functions count too
    import ast

    offenders = []
    for path in sorted((ROOT / "rtvp_edge").rglob("*.py")):
        if "messaging" in path.relative_to(ROOT / "rtvp_edge").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n.split(".")[0] in NETWORK_CLIENTS for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
