"""``rtvp-train``: train RTVPNet on a COCO/MMIOC data set, as one process or under ``torchrun`` (DDP).

Usage::

    rtvp-train --config training/configs/glass_demo.yaml
    rtvp-train --config training/configs/glass_demo.yaml optim.lr=1e-3 schedule.epochs=50 name=glass_lr1e3
    rtvp-train --config training/configs/glass_demo.yaml resume=runs/glass_demo/last.pt
    torchrun --nproc_per_node=4 -m training.train --config training/configs/rtvpnet_s_glass.yaml

Outputs go to ``runs/<name>/``: ``config.yaml`` (resolved), ``metrics.jsonl``, ``last.pt``, ``best.pt``,
``plots/``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtvp_edge.preprocess import PreprocessSpec
from training import dist
from training.checkpoint import CheckpointError, filter_state_dict, load_checkpoint
from training.config import ConfigError, TrainConfig, load_config, save_config
from training.datasets import AugmentSpec, DataError, DetectionDataset, dataset_hash
from training.engine import Trainer, wrap_ddp
from training.hooks import CheckpointHook, EvalHook, MetricsLogHook, PlotHook, PreciseBNHook


def log(info: dist.DistInfo, *msg: Any) -> None:
    if info.is_main:
        print(*msg, flush=True)


def preprocess_spec_for(
    model_config: Any, model: torch.nn.Module | None = None, crop: Any = None
) -> PreprocessSpec:
    """The model's input preprocessing: from the model when it states it, else from the config's ``img_size``;
    ``crop`` (x1, y1, x2, y2) is the data's region of interest (``data.crop``)."""
    spec = getattr(model, "preprocess_spec", None)
    if callable(spec):
        spec = spec()
    if isinstance(spec, PreprocessSpec):
        return spec
    resolved = (
        getattr(model, "config", None) or model_config
    )  # the model's resolved config has concrete sizes
    size = getattr(resolved, "img_size", None) or 640
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    mean = tuple(getattr(model_config, "pixel_mean", (0.0, 0.0, 0.0)))
    std = tuple(getattr(model_config, "pixel_std", (1.0, 1.0, 1.0)))
    return PreprocessSpec(input_size=hw, mean=mean, std=std, crop=tuple(crop) if crop else None)


def _seen(name: str, split: Any) -> bool | None:
    flags = getattr(split, "seen", None)  # the data set's own seen/unseen flags, when it has them
    if isinstance(flags, (list, tuple)) and len(flags) == len(split.class_names):
        return bool(flags[list(split.class_names).index(name)])
    from rtvp_edge.vocabulary import GLASS_DEFECTS

    for c in GLASS_DEFECTS:
        if c.name == name:
            return c.seen
    return None


def select_classes(cfg: TrainConfig, train_split: Any, val_split: Any | None) -> tuple[list[str], list[str]]:
    """(training classes, evaluation classes) for the configured protocol.

    Closed: training defaults to every class of the training split, evaluation to the training classes.
    Open: training defaults to the seen classes of the training split (the data set's flags, else
    ``rtvp_edge.vocabulary``), evaluation to the validation split's classes that were not trained on.
    """
    train_names = list(train_split.class_names)
    val_names = list(val_split.class_names) if val_split is not None else []
    unknown = [c for c in cfg.data.train_classes if c not in train_names]
    if unknown:
        raise ConfigError(
            f"data.train_classes: {unknown} are not classes of {cfg.data.root} split {cfg.data.train_split!r} "
            f"(it has {train_names})"
        )
    unknown = [c for c in cfg.data.eval_classes if c not in val_names]
    if unknown:
        raise ConfigError(
            f"data.eval_classes: {unknown} are not classes of {cfg.data.root} split {cfg.data.val_split!r} "
            f"(it has {val_names})"
        )
    if cfg.protocol == "closed":
        train = list(cfg.data.train_classes) or train_names
        if val_split is None:
            return train, train
        return train, list(cfg.data.eval_classes) or [c for c in train if c in val_names]
    if cfg.data.train_classes:
        train = list(cfg.data.train_classes)
    else:
        flags = {n: _seen(n, train_split) for n in train_names}
        unknown = [n for n, v in flags.items() if v is None]
        if unknown:
            raise ConfigError(
                f"protocol=open: seen/unseen is unknown for classes {unknown}; set data.train_classes"
            )
        train = [n for n in train_names if flags[n]]
    evalc = list(cfg.data.eval_classes) or [c for c in val_names if c not in train]
    if val_split is not None and not evalc:
        raise ConfigError(
            f"protocol=open: the validation split {cfg.data.val_split!r} has no class outside the training "
            f"classes {train}; set data.eval_classes or use the data set's open-protocol root"
        )
    return train, evalc


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _load_split_default(root: str, split: str):
    from training.data.coco import load_coco_split

    return load_coco_split(root, split)


def _embed(
    cfg: TrainConfig, prompts: list[str], info: dist.DistInfo, build_text_encoder: Callable | None
) -> tuple[torch.Tensor, str]:
    from training.text_cache import text_embeddings

    # Rank 0 fills the cache first; the others then read it instead of loading the encoder too.
    if info.is_main:
        out = text_embeddings(cfg.text.encoder, prompts, cfg.text.cache_dir, build_text_encoder)
    dist.barrier()
    if not info.is_main:
        out = text_embeddings(cfg.text.encoder, prompts, cfg.text.cache_dir, build_text_encoder)
    return out


def init_weights_from(model: torch.nn.Module, path: str, info: dist.DistInfo) -> set[str]:
    """Initialise from another run's checkpoint (EMA weights when present); parts absent there stay as built.
    Returns the names of the tensors loaded."""
    ckpt = load_checkpoint(path)
    state = filter_state_dict(ckpt["ema"]["module"] if "ema" in ckpt else ckpt["model"])
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CheckpointError(f"init_from={path}: no weight of that checkpoint fits this model")
    model.load_state_dict(usable, strict=False)
    log(
        info,
        f"init_from {path}: loaded {len(usable)}/{len(own)} tensors "
        f"({len(state) - len(usable)} in the checkpoint did not fit)",
    )
    return set(usable)


def run_training(
    cfg: TrainConfig,
    *,
    build_model: Callable[[Any], torch.nn.Module] | None = None,
    load_split: Callable[[str, str], Any] | None = None,
    build_text_encoder: Callable[[str], Any] | None = None,
) -> Path:
    """Train as configured; returns the run directory.

    Args:
        cfg: the resolved configuration.
        build_model, load_split, build_text_encoder: collaborators (default: ``training.model.build_model``,
            ``training.data.coco.load_coco_split``, ``training.model.text_encoder.build_text_encoder``).
    """
    if build_model is None:
        from training.model import build_model
    load_split = load_split or _load_split_default
    device = dist.resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = dist.init_distributed(device.type)
    try:
        return _run(cfg, info, device, build_model, load_split, build_text_encoder)
    finally:
        dist.cleanup()


def _run(cfg, info, device, build_model, load_split, build_text_encoder) -> Path:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    run_dir = Path(cfg.output.dir) / cfg.name
    if info.is_main and not cfg.resume and cfg.output.overwrite and run_dir.is_dir():
        for old in [run_dir / "metrics.jsonl", run_dir / "best.pt", *run_dir.glob("epoch_*.pt")]:
            old.unlink(missing_ok=True)  # stale results of the replaced run must not mix with the new ones
    if info.is_main and not cfg.resume and not cfg.output.overwrite and (run_dir / "last.pt").exists():
        raise ConfigError(
            f"name={cfg.name}: {run_dir} already holds a run; pick another name=, continue it with "
            f"resume={run_dir / 'last.pt'}, or replace it with output.overwrite=true"
        )
    if not Path(cfg.data.root).is_dir():
        raise DataError(f"data.root: data set directory {cfg.data.root!r} not found")
    train_split = load_split(cfg.data.root, cfg.data.train_split)
    val_split = load_split(cfg.data.root, cfg.data.val_split) if cfg.data.val_split else None
    train_classes, eval_classes = select_classes(cfg, train_split, val_split)
    prompts_of: dict[str, str] = {}
    for sp in (val_split, train_split):  # the training split's prompt wins where both name a class
        if sp is not None:
            prompts_of.update(
                zip(sp.class_names, getattr(sp, "prompts", None) or sp.class_names, strict=False)
            )
    vocabulary = [{"name": c, "prompt": prompts_of[c]} for c in train_classes]

    # Training images: in the open protocol, images showing an unseen class are left out entirely.
    indices = list(range(len(train_split.images)))
    if cfg.protocol == "open" and cfg.data.drop_images_with_unseen:
        allowed = {train_split.class_names.index(c) for c in train_classes}
        indices = [i for i in indices if all(int(c) in allowed for c in train_split.images[i].class_ids)]
    if cfg.data.max_images:
        indices = indices[: cfg.data.max_images]

    text_embeds, identity = _embed(cfg, [v["prompt"] for v in vocabulary], info, build_text_encoder)
    val_embeds = None
    if val_split is not None and eval_classes != train_classes:
        val_embeds, _ = _embed(cfg, [prompts_of[c] for c in eval_classes], info, build_text_encoder)

    torch.manual_seed(cfg.seed)  # the same initial weights on every process and for every launch
    model = build_model(cfg.model)
    loaded = init_weights_from(model, cfg.init_from, info) if cfg.init_from else set()
    if hasattr(model, "set_text_center") and "text_center" not in loaded:
        model.set_text_center(text_embeds)  # a resumed run restores its own centre with the weights
    spec = preprocess_spec_for(cfg.model, model, cfg.data.crop)
    patch = tuple(cfg.data.patch) if cfg.data.patch else None
    if patch is not None and (patch[0] > spec.input_size[0] or patch[1] > spec.input_size[1]):
        raise ConfigError(
            f"data.patch: {list(patch)} (height, width) is larger than the model input "
            f"{list(spec.input_size)} (model.img_size)"
        )
    aug = AugmentSpec(
        flip=cfg.data.flip,
        hsv=tuple(cfg.data.hsv),
        scale_jitter=cfg.data.scale_jitter,
        patch=patch,
        patch_on_defect=cfg.data.patch_on_defect,
    )
    train_set = DetectionDataset(train_split, train_classes, spec, aug, seed=cfg.seed, indices=indices)
    val_set = DetectionDataset(val_split, eval_classes, spec) if val_split is not None else None

    model.to(device)
    model_unwrapped = model
    if info.distributed:
        if device.type == "cuda" and cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = wrap_ddp(model, device, find_unused=True)
    # Model-internal random draws (patch masks, Bernoulli prompt selection) differ per process.
    torch.manual_seed(cfg.seed * 1000 + info.rank)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    provenance = {
        "dataset": str(Path(cfg.data.root).resolve()),
        "dataset_hash": dataset_hash(train_split),
        "train_split": cfg.data.train_split,
        "val_split": cfg.data.val_split,
        "train_images": len(train_set),
        "protocol": cfg.protocol,
        "stage": cfg.stage,
        "eval_classes": eval_classes,
        "init_from": cfg.init_from,
        "world_size": info.world_size,
        "git_commit": _git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
    }
    encoder = getattr(model_unwrapped, "sam", None)
    if encoder is not None and hasattr(encoder, "provenance"):
        # Where the frozen general encoder's weights came from (package, file sha256, licence).
        provenance["general_encoder"] = encoder.provenance()
    meta = {
        "model_config": getattr(model_unwrapped, "config", None) or cfg.model,  # resolved: concrete sizes
        "text_encoder": cfg.text.encoder,
        "text_encoder_identity": identity,
        "preprocess": spec,
        "provenance": provenance,
    }
    trainer = Trainer(
        cfg,
        model=model,
        train_set=train_set,
        val_set=val_set,
        text_embeds=text_embeds,
        val_text_embeds=val_embeds,
        vocabulary=vocabulary,
        checkpoint_meta=meta,
        run_dir=run_dir,
        device=device,
        dist_info=info,
    )
    metrics_path = run_dir / "metrics.jsonl"
    eval_hook = EvalHook(cfg.eval.every)
    hooks = [
        PreciseBNHook(cfg.eval.precise_bn_batches, eval_hook if val_set is not None else None),
        eval_hook,
        CheckpointHook(cfg.eval.best_metric, cfg.output.keep_every),
        MetricsLogHook(metrics_path),
    ]
    if cfg.output.plots:
        hooks.append(PlotHook(metrics_path, run_dir / "plots"))
    trainer.register_hooks(hooks)
    if cfg.resume:
        trainer.resume_from(cfg.resume)
        if info.is_main and metrics_path.exists():  # drop rows of epochs that are about to be redone
            rows = [r for r in metrics_path.read_text().splitlines() if r.strip()]
            import json

            kept = [r for r in rows if json.loads(r)["epoch"] <= trainer.start_epoch]
            metrics_path.write_text("".join(r + "\n" for r in kept))
    log(
        info,
        f"run {run_dir}: {len(train_set)} training images, {trainer.steps_per_epoch} steps/epoch x "
        f"{cfg.schedule.epochs} epochs, global batch {cfg.data.batch_size} over {info.world_size} process(es) "
        f"on {device}; classes {train_classes}" + (f", evaluated on {eval_classes}" if val_set else ""),
    )
    trainer.train()
    dist.barrier()
    if info.is_main:
        best = (
            f", best {cfg.eval.best_metric} {trainer.best:.4f} at epoch {trainer.best_epoch}"
            if trainer.best is not None
            else ""
        )
        log(info, f"done: {run_dir / 'last.pt'}{best}")
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rtvp-train",
        description="Train RTVPNet. Same command for one process or under torchrun --nproc_per_node=N.",
        epilog="Overrides: dotted key=value pairs after the options, e.g. optim.lr=1e-3 data.batch_size=8",
    )
    p.add_argument("--config", help="YAML config (training/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    from training.errors import run_cli

    args = build_parser().parse_args(argv)

    def go() -> int:
        cfg = load_config(args.config, args.overrides)
        run_training(cfg)
        return 0

    return run_cli("rtvp-train", go)


if __name__ == "__main__":
    sys.exit(main())
