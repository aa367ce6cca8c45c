"""Training throughput (images/s) of the loop's optimizer step (``training.engine.training_step``: forward,
backward, clipping, AdamW, EMA) for several model configurations, side by side in one run.

Batches are synthetic (random images, 3 boxes per image) so the figure is the model step alone; the data
loader's own throughput is measured separately with ``--data`` (letterbox + augmentation of real images).

    python benchmarks/bench_train.py --device cpu --threads 2 --batch 8 --configs tiny@160 tiny@256
    python benchmarks/bench_train.py --device cuda --batch 32 --configs s@640 s@640:bf16 tiny@320:bf16
    python benchmarks/bench_train.py --device cpu --data data/glass/closed --batch 8 --configs tiny@256

A config is ``<variant>@<img_size>[:<amp>][+<switch>=<0|1>...]`` with variant ``tiny``/``s`` (rtvpnet_tiny/_s),
amp ``fp32`` (default), ``bf16`` or ``fp16`` (CUDA only), switches of ``ModelConfig`` (``+rvp=0``, ``+edp=0``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.ema import ModelEMA  # noqa: E402
from training.engine import training_step  # noqa: E402
from training.model import ModelConfig, build_model  # noqa: E402

AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_config(text: str) -> tuple[ModelConfig, str]:
    head, *switches = text.split("+")
    variant_size, _, amp = head.partition(":")
    variant, _, size = variant_size.partition("@")
    kw = {"variant": {"tiny": "rtvpnet_tiny", "s": "rtvpnet_s"}.get(variant, variant)}
    if size:
        kw["img_size"] = int(size)
    for sw in switches:
        k, _, v = sw.partition("=")
        kw[k] = bool(int(v))
    return ModelConfig(**kw), amp or "fp32"


def synthetic_batch(b: int, size: int, n_classes: int, device) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, size, size, generator=g)
    xy = torch.rand(b * 3, 2, generator=g) * (size - 48)
    wh = 8 + torch.rand(b * 3, 2, generator=g) * 40
    targets = {
        "batch_idx": torch.arange(b).repeat_interleave(3),
        "cls": torch.randint(0, n_classes, (b * 3,), generator=g),
        "boxes": torch.cat([xy, xy + wh], 1),
    }
    return images.to(device), {k: v.to(device) for k, v in targets.items()}


def bench_model(
    cfg: ModelConfig, amp: str, batch: int, steps: int, warmup: int, device: torch.device
) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    size = model.config.img_size
    opt = torch.optim.AdamW(model.param_groups(2e-3, 0.025), lr=2e-3)
    dtype = AMP[amp] if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    ema = ModelEMA(model)
    emb = torch.nn.functional.normalize(torch.randn(8, model.config.text_dim), dim=1).to(device)
    images, targets = synthetic_batch(batch, size, 8, device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        training_step(model, opt, scaler, ema, images, targets, emb, amp_dtype=dtype, where=f"bench step {i}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    out = {
        "img_size": size,
        "amp": amp if dtype is not None else "fp32",
        "step_s": step,
        "images_per_s": batch / step,
        "trainable_M": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    }
    if device.type == "cuda":
        out["peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return out


def bench_loader(root: str, size: int, batch: int, workers: int, batches: int) -> float:
    """Images/s of DetectionDataset (read + letterbox + augmentation + collate) through a DataLoader."""
    from rtvp_edge.preprocess import PreprocessSpec
    from training.data.coco import load_coco_split
    from training.datasets import AugmentSpec, DetectionDataset, collate

    split = load_coco_split(root, "train")
    ds = DetectionDataset(split, split.class_names, PreprocessSpec(input_size=(size, size)), AugmentSpec())
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate
    )
    t0, n = time.perf_counter(), 0
    for k, (images, _, _) in enumerate(loader):
        n += images.shape[0]
        if k + 1 >= batches:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny@160", "tiny@256"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--data", default="", help="also measure the data loader on this data-set root")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default="", help="write the results here too")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import warnings

    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")  # random SAM weights: same cost
    machine = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    )
    print(
        f"# training throughput, {machine}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch}, median of {args.steps} steps after {args.warmup} warm-up"
    )
    rows = []
    for text in args.configs:
        cfg, amp = parse_config(text)
        r = bench_model(cfg, amp, args.batch, args.steps, args.warmup, device)
        r["config"] = text
        rows.append(r)
        print(json.dumps(r), flush=True)
    base = rows[0]["images_per_s"]
    print(
        "\n| config | input | amp | step (s) | images/s | vs first | trainable (M) |"
        + (" peak mem (GiB) |" if device.type == "cuda" else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if device.type == "cuda" else ""))
    for r in rows:
        mem = f" {r['peak_mem_GiB']:.1f} |" if "peak_mem_GiB" in r else ""
        print(
            f"| {r['config']} | {r['img_size']} | {r['amp']} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | "
            f"{r['images_per_s'] / base:.2f}x | {r['trainable_M']:.2f} |{mem}"
        )
    if args.data:
        size = rows[0]["img_size"]
        ips = bench_loader(args.data, size, args.batch, args.workers, 10)
        print(f"\ndata loader ({args.workers} workers, {size} px, augmentation on): {ips:.1f} images/s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
