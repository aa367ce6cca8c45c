"""Cost of RTVPNet-S per SAM-branch resolution: parameters and GFLOPs at 640 (and CPU latency).

Usage (from the repository root):

    /work/venv/bin/python benchmarks/bench_model_cost.py --out benchmarks/results/model.md

Writes a markdown table next to the paper's figures (76 M parameters with text encoder, 17 GFLOPs) and
the issue's budget (YOLO-World-S v2: 32.8 GFLOPs at 640, 2xMAC). FLOPs: torch.utils.flop_counter, 2xMAC.
"""

from __future__ import annotations

import argparse
import platform
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


def latencies_ms(models: list, img_size: int, reps: int) -> list[float]:
    """Fastest of ``reps`` eager CPU forward passes per model, measured round-robin so that load from
    other jobs on the shared machine spreads over all models instead of biasing one."""
    x = torch.zeros(1, 3, img_size, img_size)
    best = [float("inf")] * len(models)
    with torch.no_grad():
        for _ in range(reps + 1):  # the first round is a warm-up and also counts
            for i, model in enumerate(models):
                t = torch.nn.functional.normalize(torch.ones(8, model.text_dim), dim=-1)
                t0 = time.perf_counter()
                model.forward_inference(x, t)
                best[i] = min(best[i], (time.perf_counter() - t0) * 1e3)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=640)
    ap.add_argument("--sam-sizes", type=int, nargs="+", default=[640, 448, 384, 320, 288, 256, 224, 192])
    ap.add_argument("--reps", type=int, default=5, help="latency rounds, round-robin over configs (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)  # random-weight warnings: costs do not depend on weights

    clip = build_text_encoder("open_clip:ViT-B-32:random")
    text_params = clip.num_parameters()
    lat_head = " CPU ms (min) | ms ratio |" if args.reps else ""
    lines = [
        f"| configuration | params model (M) | params + CLIP text (M) | trainable (M) | GFLOPs @{args.img_size} "
        f"| SAM | expert | head | EDP+RVP+T-V+V-T | vs budget {BUDGET} |{lat_head}",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.reps else ""),
    ]
    fits: list[tuple[int, float]] = []
    models, table = [], []
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
        print(line, flush=True)
        models.append(model)
        table.append(line)
        if cfg.edp and f["total"] <= BUDGET:
            fits.append((cfg.sam_img_size, f["total"]))
    if args.reps:
        ms = latencies_ms(models, args.img_size, args.reps)
        table = [f"{line} {m:.0f} | {m / ms[0]:.2f} |" for line, m in zip(table, ms, strict=True)]
    lines += table
    header = [
        "# RTVPNet-S cost per SAM-branch resolution",
        "",
        f"Command: `/work/venv/bin/python benchmarks/bench_model_cost.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Machine: {platform.machine()} 2-core CPU shared with other jobs, torch {torch.__version__}, "
        f"{args.threads} thread(s). Latency: eager PyTorch, fastest of {args.reps + 1} round-robin runs per "
        "configuration, indicative only (the deployed path is OpenVINO/TensorRT, see benchmarks/results/export.md).",
        "",
        f"FLOPs: {FLOP_CONVENTION}; batch 1, {args.img_size}x{args.img_size} expert input, 8 classes.",
        f"Text encoder counted: open_clip ViT-B-32 text tower, {text_params / 1e6:.1f} M parameters (image tower dropped).",
        f"Reference: {PAPER}. Budget: YOLO-World-S v2 {BUDGET} GFLOPs, YOLOv8-S 28.6 GFLOPs (issue, 2xMAC).",
        "",
    ]
    # The CPU/CI/demo variant at its own input size, for the training benchmarks' budget.
    tiny_cfg = ModelConfig(variant="rtvpnet_tiny").resolved()
    tiny = build_model(tiny_cfg).eval()
    tp, tf = count_parameters(tiny), count_flops(tiny, tiny_cfg.img_size)
    tiny_lines = [
        "",
        f"`rtvpnet_tiny` (expert width {tiny_cfg.width}, input {tiny_cfg.img_size}, SAM branch at "
        f"{tiny_cfg.sam_img_size}): {tp['model'] / 1e6:.1f} M parameters ({tp['trainable'] / 1e6:.1f} M trainable), "
        f"{tf['total']:.2f} GFLOPs (SAM {tf.get('sam', 0):.2f}, expert {tf.get('expert', 0):.2f}, "
        f"head {tf.get('head', 0):.2f}).",
    ]
    lines += tiny_lines
    best = max(fits) if fits else None
    notes = [
        "",
        "## Reading",
        "",
        (
            f"- Largest SAM-branch size within the budget: **{best[0]} px, {best[1]:.1f} GFLOPs** "
            "(the `rtvpnet_s` default)."
            if best
            else "- No SAM-branch size fits the budget."
        ),
        "- The SAM branch only delivers the coarse prompt: its maps are upsampled onto the expert's grids.",
        "  Sizes whose /16 grid is a multiple of TinyViT's 14x14 window (224, 448) avoid padded attention.",
        "- GFLOPs count matmul/conv only; energy activation, masking and other element-wise ops are not",
        "  counted but take CPU time in eager PyTorch (latency ratios can exceed the FLOP ratios).",
        "- Paper: 17 GFLOPs, 76 M parameters. On this counter the expert alone (YOLOv8-S backbone+neck)",
        "  costs 20.3 GFLOPs, so the paper's figure is likely MACs or another input size.",
        "- Accuracy per choice: measured by the training benchmark (configs `model.sam_img_size=320|256|224`",
        "  and `model.edp=false`), see `benchmarks/results/train.md` when present.",
    ]
    text = "\n".join(header + lines + notes) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
