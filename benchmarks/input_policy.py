"""How the model should see an 820x700 rig view: the input policies compared at the same CPU budget.

Policies (all share ``rtvp_edge.preprocess``; the crop is ``data.crop`` and ends up in the bundle):

- ``full@320``     the whole view letterboxed into 320x320 (the old recipe: a 10 px defect becomes 4 px)
- ``crop@448x384`` the container's region [100, 208, 600, 784] at 0.77x (a 10 px defect becomes 7.7 px)
- ``crop@576x512`` the same region at its native resolution (a 10 px defect stays 10 px)

Protocol: one alternating timing sweep of a training step per policy (the model alone, random data, in
one process) gives each policy's images/s on this CPU; each policy then trains for ``--budget-min``
minutes' worth of images (``data.max_images = budget * images/s``, one epoch, so the schedule completes)
from the same base config and seed, and is scored on the same val split (pycocotools AP50, class-aware and
class-agnostic).

    python benchmarks/input_policy.py --config training/configs/glass_demo.yaml \
        --data data/glass1x/closed --budget-min 10 --out benchmarks/results/input_policy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402

POLICIES = {
    "full@320": {"model.img_size": 320, "data.crop": []},
    "crop@448x384": {"model.img_size": [448, 384], "data.crop": [100, 208, 600, 784]},
    "crop@576x512": {"model.img_size": [576, 512], "data.crop": [100, 208, 600, 784]},
}


def step_throughput(
    config_path: str, overrides: dict[str, dict], batch: int, sweeps: int, threads: int
) -> dict:
    """Training-step images/s per policy: alternating sweeps, the model alone on random data."""
    import torch

    from training.config import load_config
    from training.model import build_model

    torch.set_num_threads(threads)
    models = {}
    for name, ov in overrides.items():
        cfg = load_config(config_path, [f"{k}={json.dumps(v)}" for k, v in ov.items()])
        torch.manual_seed(0)
        m = build_model(cfg.model)
        m.train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-3)
        models[name] = (m, opt, cfg.model.input_hw())
    text = torch.nn.functional.normalize(torch.randn(8, 512), dim=-1)
    targets = {
        "batch_idx": torch.arange(batch),
        "cls": torch.arange(batch) % 8,
        "boxes": torch.tensor([[60.0, 60.0, 76.0, 80.0]] * batch),
    }
    times: dict[str, list[float]] = {n: [] for n in models}
    for sweep in range(sweeps + 1):
        for name, (m, opt, hw) in models.items():
            x = torch.rand(batch, 3, *hw)
            t0 = time.perf_counter()
            loss = m.forward_training(x, targets, text)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sweep:  # the first sweep warms up
                times[name].append(time.perf_counter() - t0)
    return {n: batch / (sum(t) / len(t)) for n, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True, help="closed-protocol data root")
    ap.add_argument("--budget-min", type=float, default=10.0)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweeps", type=int, default=3)
    ap.add_argument("--runs", default="runs/input_policy")
    ap.add_argument("--out", default="benchmarks/results/input_policy.json")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every policy")
    args = ap.parse_args(argv)

    from training.config import load_config
    from training.train import run_training

    chosen = {p: POLICIES[p] for p in args.policies}
    speed = step_throughput(args.config, chosen, batch=8, sweeps=args.sweeps, threads=args.threads)
    print("training-step images/s:", {k: round(v, 2) for k, v in speed.items()}, flush=True)
    results = []
    for name, ov in chosen.items():
        n_images = int(speed[name] * args.budget_min * 60)
        overrides = {
            **ov,
            "data.root": args.data,
            "data.max_images": n_images,
            "schedule.epochs": 1,
            "schedule.warmup_epochs": 0.1,
            "eval.every": 1,
            "name": name.replace("@", "_"),
            "output.dir": args.runs,
            "output.overwrite": True,
            "output.progress": False,
            "output.plots": False,
            "threads": args.threads,
        }
        items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()] + list(args.set)
        cfg = load_config(args.config, items)
        t0 = time.perf_counter()
        run = run_training(cfg)
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        last = rows[-1]
        results.append(
            {
                "policy": name,
                "input": cfg.model.input_hw(),
                "crop": list(cfg.data.crop),
                "step_images_per_s": speed[name],
                "train_images": n_images,
                "wall_s": wall,
                "AP50": last.get("val/AP50"),
                "AP": last.get("val/AP"),
                "per_class_AP50": {k.split("/")[1]: v for k, v in last.items() if k.startswith("val_class/")},
            }
        )
        print(json.dumps(results[-1]), flush=True)
    report = {
        "command": "python " + " ".join(sys.argv),
        "cpu": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "budget_min": args.budget_min,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("\n| policy | input (h, w) | step images/s | images trained | val AP50 |")
    print("|---|---|---|---|---|")
    for r in results:
        ap50 = r["AP50"]
        print(
            f"| {r['policy']} | {tuple(r['input'])} | {r['step_images_per_s']:.1f} | {r['train_images']} | "
            f"{'n/a' if ap50 is None else f'{100 * ap50:.1f}'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
