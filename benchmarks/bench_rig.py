"""How fast the simulated rig renders, on one core, at the line's 820 x 700 resolution.

    /work/venv/bin/python benchmarks/bench_rig.py --containers 40 --write benchmarks/results/rig.md

Measures, side by side in one run:
- ``render_view``: one camera image with its ground truth (what each camera thread does per trigger);
- ``SimulatedRig``: the six cameras read in turn, not realtime (sampling + rendering + Frame);
- ``render + JPEG 95``: what ``rtvp-data generate`` does per image;
- the one-off warm-up (back-lit glass templates for every shape x tint, noise field).
The line target is 2 containers/s x 6 views = 12 frames/s; figures are ratios to it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

# one core: keep OpenCV / BLAS from spreading over the machine
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rtvp_edge.rig import RigConfig, SimulatedRig, render_view, sample_container, warm_up  # noqa: E402

TARGET_FPS = 12.0


def _time(fn, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--containers", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", type=Path, default=None, help="write the results as markdown here")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cfg = RigConfig(seed=args.seed)
    n = args.containers

    t0 = time.perf_counter()
    warm_up(cfg)
    warm = time.perf_counter() - t0

    specs = [sample_container(cfg, i) for i in range(n)]
    t_sample = _time(lambda i: sample_container(cfg, 10_000 + i), n)
    t_render = _time(lambda i: render_view(cfg, specs[i // 6], i % 6), 6 * n)

    def encode(i: int) -> None:
        img, _ = render_view(cfg, specs[i // 6], i % 6)
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])

    t_jpeg = _time(encode, 6 * n)

    rig = SimulatedRig(cfg, n_containers=n, start_index=20_000, realtime=False)
    cams = rig.cameras()
    for c in cams:
        c.open()
    t = time.perf_counter()
    for _ in range(n):
        for c in cams:
            c.read(1.0)
    t_rig = time.perf_counter() - t

    rows = [
        ("render_view (one camera image + ground truth)", t_render / (6 * n)),
        ("SimulatedRig, six cameras read in turn", t_rig / (6 * n)),
        ("render + JPEG q95 encode (data generation)", t_jpeg / (6 * n)),
    ]
    lines = [
        "# Rig rendering speed",
        "",
        f"Command: `/work/venv/bin/python benchmarks/bench_rig.py --containers {n}`  ",
        f"Machine: {platform.machine()} {platform.processor() or ''} - pinned to 1 core (of {os.cpu_count()}, "
        f"shared with other work), Python {platform.python_version()}, numpy {np.__version__}, "
        f"OpenCV {cv2.__version__}; images 820 x 700 BGR, {n} containers x 6 views; "
        f"load average at the end {os.getloadavg()[0]:.1f} (other engineers' jobs share the cores).",
        "",
        f"Target: 2 containers/s x 6 views = {TARGET_FPS:.0f} frames/s.",
        "",
        "| stage | ms / frame | frames / s | x target |",
        "|---|---:|---:|---:|",
    ]
    for name, per in rows:
        lines.append(f"| {name} | {per * 1e3:.1f} | {1 / per:.0f} | {1 / per / TARGET_FPS:.1f} |")
    lines += [
        "",
        f"Sampling a container (shape, pose, defect sprites): {t_sample / n * 1e3:.2f} ms each.  ",
        f"One-off warm-up (glass templates for {len(cfg.shapes)} shapes x {len(cfg.tints)} tints, noise field): "
        f"{warm:.2f} s (done lazily, per shape x tint, on first use).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
