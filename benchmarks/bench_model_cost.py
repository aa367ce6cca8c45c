"""Cost of RTVPNet-S per SAM-branch resolution: parameters and GFLOPs at 640 (and CPU latency).

Usage (from the repository root):

    /work/venv/bin/python benchmarks/bench_model_cost.py --out benchmarks/results/model.md

Writes a markdown table next to the paper's figures (76 M parameters with text encoder, 17 GFLOPs) and
the issue's budget (YOLO-World-S v2: 32.8 GFLOPs at 640, 2xMAC). FLOPs: torch.utils.flop_counter, 2xMAC.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.model import ModelConfig, build_model  # noqa: E402
from training.model.complexity import FLOP_CONVENTION, count_flops, count_parameters  # noqa: E402
from training.model.text_encoder import build_text_encoder  # noqa: E402

BUDGET = 32.8  # YOLO-World-S v2 GFLOPs at 640 (issue 3, measured 2xMAC)
PAPER = "RTVPNet-S (paper, Table III): 76 M parameters incl. text encoder, 17 GFLOPs"


def rows(sam_sizes: list[int], img_size: int):
    yield (
        "expert + head only (edp, rvp, tv, vt off)",
        ModelConfig(variant="rtvpnet_s", img_size=img_size, edp=False, rvp=False, tv=False, vt=False),
    )
    yield (
        "no SAM branch (edp off; rvp, tv, vt on)",
        ModelConfig(variant="rtvpnet_s", img_size=img_size, edp=False),
    )
    for s in sam_sizes:
        yield f"SAM branch at {s}", ModelConfig(variant="rtvpnet_s", img_size=img_size, sam_img_size=s)


def latency_ms(model, img_size: int, reps: int) -> float:
    x = torch.zeros(1, 3, img_size, img_size)
    t = torch.nn.functional.normalize(torch.ones(8, model.text_dim), dim=-1)
    with torch.no_grad():
        model.forward_inference(x, t)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model.forward_inference(x, t)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=640)
    ap.add_argument("--sam-sizes", type=int, nargs="+", default=[640, 448, 384, 320, 288, 256, 224, 192])
    ap.add_argument("--reps", type=int, default=3, help="latency repetitions (0: skip latency)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)  # random-weight warnings: costs do not depend on weights

    clip = build_text_encoder("open_clip:ViT-B-32:random")
    text_params = clip.num_parameters()
    lat_head = " CPU ms (median) | ms ratio |" if args.reps else ""
    lines = [
        f"| configuration | params model (M) | params + CLIP text (M) | trainable (M) | GFLOPs @{args.img_size} "
        f"| SAM | expert | head | EDP+RVP+T-V+V-T | vs budget {BUDGET} |{lat_head}",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.reps else ""),
    ]
    base_ms = None
    for label, cfg in rows(args.sam_sizes, args.img_size):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        p = count_parameters(model, clip)
        f = count_flops(model, args.img_size)
        extra = sum(f.get(k, 0.0) for k in ("projection", "rvp", "tv", "vt"))
        line = (
            f"| {label} | {p['model'] / 1e6:.1f} | {p['total_with_text'] / 1e6:.1f} | {p['trainable'] / 1e6:.1f} "
            f"| **{f['total']:.1f}** | {f.get('sam', 0):.1f} | {f.get('expert', 0):.1f} | {f.get('head', 0):.1f} "
            f"| {extra:.1f} | {f['total'] / BUDGET:.2f}x {'ok' if f['total'] <= BUDGET else 'over'} |"
        )
        if args.reps:
            ms = latency_ms(model, args.img_size, args.reps)
            base_ms = base_ms or ms
            line += f" {ms:.0f} | {ms / base_ms:.2f} |"
        print(line, flush=True)
        lines.append(line)
    header = [
        "# RTVPNet-S cost per SAM-branch resolution",
        "",
        f"Command: `/work/venv/bin/python benchmarks/bench_model_cost.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"Machine: {platform.machine()} CPU, torch {torch.__version__}, {args.threads} thread(s), shared 2-core box "
        "(latency is indicative only: other jobs ran at the same time).",
        f"FLOPs: {FLOP_CONVENTION}; batch 1, {args.img_size}x{args.img_size} expert input, 8 classes.",
        f"Text encoder counted: open_clip ViT-B-32 text tower, {text_params / 1e6:.1f} M parameters (image tower dropped).",
        f"Reference: {PAPER}. Budget: YOLO-World-S v2 {BUDGET} GFLOPs, YOLOv8-S 28.6 GFLOPs (issue, 2xMAC).",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
