"""The machine a benchmark ran on, as every results file states it: CPU model and its bf16/int8 units."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_name() -> str:
    """``"<lscpu model name> (<n> cores visible; <bf16/int8 units or none>)"``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), ""
        )
    except (OSError, subprocess.CalledProcessError):
        name = platform.processor()
    flags = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    units = [f for f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{name} ({os.cpu_count()} cores visible; {', '.join(units) or 'no bf16/int8 units'})"


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
              "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")  # fmt: skip


def cpu_flags() -> str:
    """The SIMD flags of /proc/cpuinfo that decide OpenVINO's CPU kernels (space separated, "" if unknown)."""
    text = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return " ".join(f for f in SIMD_FLAGS if f in present)
