"""PLC benchmark: trigger-to-signal latency seen by a PLC over OPC UA and over Modbus TCP, on the demo line.

    python benchmarks/bench_plc.py                     # demo line (line_config/glass.yaml), 40 parts
    python benchmarks/bench_plc.py --parts 100 --poll-ms 5

The demo line runs as `rtvp-edge run` runs it (simulated rig at its line rate, six 700x820 cameras, the
demo bundle on OpenVINO) with both PLC servers started. Two PLC clients in this process poll the station
every ``--poll-ms`` (a PLC scan cycle): an asyncua client reading ``ResultSeq``/``TriggerSeq`` and a pymodbus
client reading the holding registers. For each part, latency = the moment the client first reads its
result - the capture time (monotonic clock) of the part's first frame, i.e. trigger to signal as the PLC
sees it, including inference, the handshake server and the poll period (up to ``--poll-ms`` of it is
polling). The station's own trigger-to-signal (before any protocol) is reported alongside.
Results are appended to benchmarks/results/plc.md with the command, CPU model/flags and date.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtvp_edge.config import load_line_config  # noqa: E402
from rtvp_edge.pipeline import build_pipeline  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    a = np.asarray(xs)
    return f"p50 {np.percentile(a, 50):.1f} ms, p99 {np.percentile(a, 99):.1f} ms, max {a.max():.1f} ms (n={len(a)})"


def opcua_client(port: int, poll_s: float, seen: dict, stop: threading.Event) -> None:
    from asyncua import Client, ua

    async def main() -> None:
        c = Client(f"opc.tcp://127.0.0.1:{port}/rtvp-edge/", timeout=30)
        await c.connect()
        try:
            ns = await c.get_namespace_index("urn:rtvp-edge:plc")
            seq_n = c.get_node(ua.NodeId("rig-1.ResultSeq", ns))
            trig_n = c.get_node(ua.NodeId("rig-1.TriggerSeq", ns))
            last = 0
            while not stop.is_set():
                seq, trig = (await c.read_values([seq_n, trig_n]))[:2]
                now = time.monotonic()
                if seq != last:
                    last = seq
                    seen.setdefault(trig, now)
                await asyncio.sleep(poll_s)
        finally:
            await c.disconnect()

    asyncio.run(main())


def modbus_client(port: int, poll_s: float, seen: dict, stop: threading.Event) -> None:
    from pymodbus.client import ModbusTcpClient

    from rtvp_edge.messaging.plc import modbus as m

    c = ModbusTcpClient("127.0.0.1", port=port, timeout=10)
    assert c.connect()
    last = 0
    try:
        while not stop.is_set():
            r = c.read_holding_registers(0, count=m.TRIGGER_SEQ_LO + 1).registers
            now = time.monotonic()
            if r[m.RESULT_SEQ] != last:
                last = r[m.RESULT_SEQ]
                seen.setdefault(r[m.TRIGGER_SEQ_HI] << 16 | r[m.TRIGGER_SEQ_LO], now)
            time.sleep(poll_s)
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--line", type=Path, default=ROOT / "line_config" / "glass.yaml")
    ap.add_argument("--parts", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3, help="first parts not counted (backend warm-up)")
    ap.add_argument("--poll-ms", type=float, default=5.0)
    ap.add_argument("--deadline-ms", type=float, default=5000.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plc.md")
    args = ap.parse_args()

    raw = yaml.safe_load(args.line.read_text())
    raw["model"]["bundle"] = str((args.line.parent / raw["model"]["bundle"]).resolve())
    raw.pop("mqtt", None)
    raw["evidence"] = {"enabled": False}
    raw.setdefault("sim", {})["n_containers"] = args.parts + args.warmup + 2
    opc_port, mb_port = free_port(), free_port()
    raw["plc"] = {
        "reject_deadline_ms": args.deadline_ms,
        "opcua": {
            "host": "127.0.0.1",
            "port": opc_port,
            "security_policies": ["None"],
            "allow_anonymous": True,
        },
        "modbus": {"host": "127.0.0.1", "port": mb_port},
    }
    with tempfile.TemporaryDirectory() as tmp:
        line = Path(tmp) / "line.yaml"
        line.write_text(yaml.safe_dump(raw))
        config = load_line_config(line)
        t0: dict[int, float] = {}
        station_ms: dict[int, float] = {}

        def record(verdict, frames) -> None:
            t0[verdict.trigger_seq] = min((f.monotonic for f in frames), default=float("nan"))
            if verdict.plc and "trigger_to_signal_ms" in verdict.plc:
                station_ms[verdict.trigger_seq] = verdict.plc["trigger_to_signal_ms"]

        p = build_pipeline(config, use_mqtt=False, part_sinks=[record])
        seen_opc: dict[int, float] = {}
        seen_mb: dict[int, float] = {}
        stop = threading.Event()
        clients = [
            threading.Thread(
                target=opcua_client, args=(opc_port, args.poll_ms / 1e3, seen_opc, stop), daemon=True
            ),
            threading.Thread(
                target=modbus_client, args=(mb_port, args.poll_ms / 1e3, seen_mb, stop), daemon=True
            ),
        ]
        for c in clients:
            c.start()
        time.sleep(2.0)  # clients connected (asyncua session set-up) before the first container
        summary = p.run(max_parts=args.parts + args.warmup)
        time.sleep(4 * args.poll_ms / 1e3 + 0.2)  # the clients' last poll
        stop.set()
        for c in clients:
            c.join(10)
        p.close()

    def lat(seen: dict[int, float]) -> list[float]:
        return [(seen[k] - t0[k]) * 1e3 for k in sorted(seen) if k in t0 and k >= args.warmup]

    opc, mb = lat(seen_opc), lat(seen_mb)
    st = [v for k, v in station_ms.items() if k >= args.warmup]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Flags")), "?")
    simd = " ".join(f for f in flags.split() if f.startswith(("avx", "sse4", "amx", "fma")))
    load = os.getloadavg()
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    text = f"""
## {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}: `{cmd}`

Machine: {model}, {os.cpu_count()} logical CPUs ({simd}); {platform.python_version()}; load average at the end
{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (other jobs were running: figures are for a busy box).
Line: {args.line.name} (simulated rig, {raw["sim"].get("line_rate_hz", 2.0)} containers/s, 6 cameras 700x820,
{raw["model"]["backend"]} {raw["model"].get("threads", 0)} threads), {args.parts} parts timed after {args.warmup} warm-up parts,
verdicts {summary.verdicts}; PLC clients poll every {args.poll_ms:g} ms; deadline {args.deadline_ms:g} ms
(parts signalled by the deadline instead: {p.plc_station.stats.get("deadline", 0)}).

| trigger -> signal | latency |
|---|---|
| station (before any protocol) | {pct(st)} |
| OPC UA client (asyncua, read ResultSeq/TriggerSeq) | {pct(opc)} |
| Modbus TCP client (pymodbus, read holding registers) | {pct(mb)} |
"""
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.out.exists():
        args.out.write_text(
            "# PLC trigger-to-signal latency (benchmarks/bench_plc.py)\n\n"
            "From the capture of a part's first frame to the moment a PLC client reads its result.\n"
        )
    with args.out.open("a") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
