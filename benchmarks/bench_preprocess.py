"""Preprocessing cost of one part (six 820x700 views -> one (6, 3, H, W) batch), side by side in one run:
the shared ``rtvp_edge.preprocess.preprocess`` (per-channel lookup table) against the plain float formula
over a reversed/transposed view (what it replaced). Reports medians and the ratio.

    python benchmarks/bench_preprocess.py [--size 640] [--rounds 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from rtvp_edge.preprocess import PreprocessSpec, letterbox, preprocess


def float_formula(images, spec):
    out = []
    mean = np.float32(spec.mean).reshape(3, 1, 1)
    std = np.float32(spec.std).reshape(3, 1, 1)
    for img in images:
        lb, _ = letterbox(img, spec.input_size, spec.pad_value)
        x = lb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
        out.append((x - mean) / std)
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    views = [rng.integers(0, 256, (820, 700, 3), dtype=np.uint8) for _ in range(6)]
    spec = PreprocessSpec(input_size=(args.size, args.size), mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    assert np.allclose(preprocess(views, spec)[0], float_formula(views, spec), atol=1e-5)
    times = {"lookup table (rtvp_edge.preprocess)": [], "float formula": []}
    for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
        t = time.perf_counter()
        preprocess(views, spec)
        times["lookup table (rtvp_edge.preprocess)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        float_formula(views, spec)
        times["float formula"].append(time.perf_counter() - t)
    base = statistics.median(times["float formula"])
    print(f"machine: {platform.machine()} {platform.processor() or ''}, numpy {np.__version__}")
    print(f"six 820x700 views -> (6, 3, {args.size}, {args.size}), median of {args.rounds} rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:38s} {med * 1e3:7.1f} ms   {base / med:4.2f}x")


if __name__ == "__main__":
    main()
