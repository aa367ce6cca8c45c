"""The training loop: small and explicit (nanoGPT-style), with hooks for evaluation, checkpoints and logging.

One optimizer step per global batch: forward (``forward_training``) -> loss -> backward (DDP all-reduces the
gradients) -> gradient clipping -> AdamW step -> EMA update. The learning rate of every parameter group is its
initial rate times ``training.schedule.lr_factor(step)``. Everything the next step depends on (weights, EMA,
optimizer moments, loop position, random generators) is in the checkpoint, so ``resume=`` continues a run
bit-for-bit (on the same hardware and process count).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from training import dist
from training.checkpoint import load_checkpoint, save_checkpoint, set_rng_state, unwrap
from training.config import TrainConfig
from training.datasets import DetectionDataset, GlobalBatchSampler, collate
from training.ema import ModelEMA
from training.errors import TrainingError
from training.hooks import HookBase
from training.schedule import lr_factor, warmup_steps_for


class Trainer:
    """Runs a configured training of an already-built model on already-built data sets.

    Args:
        cfg: the resolved configuration.
        model: the model (on ``device``), with ``forward_training``, ``forward_inference`` and ``param_groups``.
        train_set: augmented training samples (``DetectionDataset``).
        val_set: evaluation samples (None = no evaluation).
        text_embeds: (C, D) embeddings of the training vocabulary.
        val_text_embeds: (C', D) embeddings of the evaluation vocabulary (open protocol: the unseen classes).
        vocabulary: ``[{name, prompt}]`` of the training classes.
        checkpoint_meta: extra checkpoint entries (``model_config``, ``text_encoder``, ``text_encoder_identity``,
            ``preprocess``, ``provenance``).
        run_dir: output directory.
        device: training device.
        dist_info: this process's rank / world size.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        model: nn.Module,
        train_set: DetectionDataset,
        val_set: DetectionDataset | None,
        text_embeds: torch.Tensor,
        val_text_embeds: torch.Tensor | None,
        vocabulary: list[dict],
        checkpoint_meta: dict,
        run_dir: Path,
        device: torch.device,
        dist_info: dist.DistInfo,
    ):
        self.cfg = cfg
        self.device = device
        self.dist = dist_info
        self.run_dir = run_dir
        self.model = model
        self.train_set, self.val_set = train_set, val_set
        self.text_embeds = text_embeds.to(device)
        self.val_text_embeds = (val_text_embeds if val_text_embeds is not None else text_embeds).to(device)
        self.vocabulary = vocabulary
        self.checkpoint_meta = checkpoint_meta
        self.hooks: list[HookBase] = []

        self.sampler = GlobalBatchSampler(
            len(train_set), cfg.data.batch_size, dist_info.rank, dist_info.world_size, seed=cfg.seed
        )
        self.steps_per_epoch = len(self.sampler)
        # Expert pre-training (TPAMI Eq. 1) for the first ``pretrain_epochs`` of a joint run, or the whole run
        # with stage=pretrain; each phase has its own optimizer and its own warm-up + decay schedule.
        self.pretrain_epochs = (
            cfg.schedule.epochs
            if cfg.stage == "pretrain"
            else (
                min(cfg.schedule.pretrain_epochs, cfg.schedule.epochs)
                if getattr(cfg.model, "pretrain", True)
                else 0
            )
        )
        self.optimizer: torch.optim.Optimizer | None = None
        self.optimizer_phase = ""
        self.amp_dtype = amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEMA(unwrap(model), cfg.ema.decay, cfg.ema.tau) if cfg.ema.enabled else None

        self.epoch = 0  # index of the running epoch (0-based)
        self.start_epoch = 0
        self.step = 0  # optimizer steps done
        self.best: float | None = None
        self.best_epoch = 0
        self.epoch_metrics: dict[str, Any] = {}
        self.last_eval: dict | None = None

    # ----------------------------------------------------------------------------------------- phases

    def phase_of(self, epoch: int) -> str:
        """``"pretrain"`` (expert + head alone) or ``"joint"`` for a 0-based epoch."""
        return "pretrain" if epoch < self.pretrain_epochs else "joint"

    def phase_epochs(self, phase: str) -> tuple[int, int]:
        """(first epoch, number of epochs) of a phase."""
        if phase == "pretrain":
            return 0, self.pretrain_epochs
        return self.pretrain_epochs, self.cfg.schedule.epochs - self.pretrain_epochs

    def build_optimizer(self, phase: str) -> torch.optim.Optimizer:
        """AdamW over the model's parameter groups for ``phase`` (coupled expert rate in the joint phase)."""
        cfg = self.cfg
        groups = unwrap(self.model).param_groups(cfg.optim.lr, cfg.optim.weight_decay, stage=phase)
        opt = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas)
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
        return opt

    def lr_factor(self) -> float:
        """Schedule factor at the current step, within the current phase."""
        s = self.cfg.schedule
        first, n_epochs = self.phase_epochs(self.phase_of(self.epoch))
        total = max(1, n_epochs * self.steps_per_epoch)
        warmup = warmup_steps_for(s.warmup_epochs, self.steps_per_epoch, total)
        return lr_factor(
            self.step - first * self.steps_per_epoch,
            total,
            warmup,
            kind=s.kind,
            warmup_start=s.warmup_start,
            final_factor=s.final_factor,
        )

    # ----------------------------------------------------------------------------------------- hooks

    def register_hooks(self, hooks: list[HookBase]) -> None:
        for h in hooks:
            h.trainer = self
        self.hooks.extend(hooks)

    def _call(self, name: str) -> None:
        for h in self.hooks:
            getattr(h, name)()

    # ----------------------------------------------------------------------------------- state

    def trainer_state(self) -> dict:
        return {
            "epoch": self.epoch + 1,  # epochs completed
            "step": self.step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "world_size": self.dist.world_size,
            "optimizer_phase": self.optimizer_phase,
        }

    def save(self, path: Path, rng_per_rank: list[dict] | None = None) -> Path:
        """Checkpoint with everything for exact resume (rank 0 calls this; ``rng_per_rank`` gathered by all)."""
        meta = self.checkpoint_meta
        provenance = dict(meta["provenance"])
        provenance.update(
            epoch=self.epoch + 1,
            step=self.step,
            metrics={k: v for k, v in self.epoch_metrics.items() if k.startswith(("val/", "train/"))},
            best={"metric": self.cfg.eval.best_metric, "value": self.best, "epoch": self.best_epoch},
        )
        return save_checkpoint(
            path,
            self.model,
            self.optimizer,
            model_config=meta["model_config"],
            vocabulary=self.vocabulary,
            text_encoder=meta["text_encoder"],
            text_encoder_identity=meta.get("text_encoder_identity", ""),
            preprocess=meta["preprocess"],
            provenance=provenance,
            text_embeddings=self.text_embeds,
            ema=self.ema,
            scaler=self.scaler if self.scaler.is_enabled() else None,
            trainer_state=self.trainer_state(),
            train_config=self.cfg,
            include_rng=True,
            rng_per_rank=rng_per_rank,
        )

    def resume_from(self, path: str) -> None:
        """Restore weights, EMA, optimizer, scaler, loop position and random generators."""
        ckpt = load_checkpoint(path)
        missing = [k for k in ("optimizer", "trainer", "rng") if k not in ckpt]
        if missing:
            from training.checkpoint import CheckpointError

            raise CheckpointError(
                f"{path}: cannot resume, the checkpoint lacks {missing} (use init_from= instead)"
            )
        unwrap(self.model).load_state_dict(ckpt["model"])
        if self.ema is not None and "ema" in ckpt:
            self.ema.module.load_state_dict(ckpt["ema"]["module"])
            self.ema.updates = int(ckpt["ema"]["updates"])
        saved_phase = ckpt["trainer"].get("optimizer_phase", "")
        if saved_phase and saved_phase == self.phase_of(int(ckpt["trainer"]["epoch"])):
            # Still in the phase the optimizer was saved in: continue its moments exactly.
            self.optimizer = self.build_optimizer(saved_phase)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.optimizer_phase = saved_phase
        if "scaler" in ckpt and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        st = ckpt["trainer"]
        self.start_epoch = int(st["epoch"])
        self.step = int(st["step"])
        self.best = st.get("best")
        self.best_epoch = int(st.get("best_epoch", 0))
        per_rank = ckpt.get("rng_per_rank") or []
        if len(per_rank) == self.dist.world_size:  # each process continues its own random draws
            set_rng_state(per_rank[self.dist.rank])
        else:  # other process count than the saved run: rank 0's state, other ranks offset from it
            set_rng_state(ckpt["rng"])
            if self.dist.rank:
                torch.manual_seed(self.cfg.seed * 1000 + self.dist.rank + 7919 * self.start_epoch)

    # --------------------------------------------------------------------------------- the loop

    def _loader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_sampler=self.sampler,
            num_workers=self.cfg.data.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # fresh workers each epoch inherit the dataset's epoch (augmentation seed)
        )

    def train(self) -> None:
        self._call("before_train")
        try:
            for epoch in range(self.start_epoch, self.cfg.schedule.epochs):
                self.epoch = epoch
                self.train_one_epoch()
                self._call("after_epoch")
        finally:
            self._call("after_train")

    def train_one_epoch(self) -> None:
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch)
        self.train_set.set_epoch(self.epoch)
        self.epoch_metrics = {}
        self._call("before_epoch")
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        n_steps, n_images, t0 = 0, 0, time.perf_counter()
        loader = self._loader()
        bar = None
        if cfg.output.progress and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(
                total=len(loader),
                desc=f"epoch {self.epoch + 1}/{cfg.schedule.epochs}",
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )
        phase = self.phase_of(self.epoch)
        if phase != self.optimizer_phase:
            self.optimizer, self.optimizer_phase = self.build_optimizer(phase), phase
        for images, targets, _ in loader:
            factor = self.lr_factor()
            for g in self.optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            images = images.to(self.device, non_blocking=True)
            targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
            losses, grad_norm = training_step(
                self.model, self.optimizer, self.scaler, self.ema, images, targets, self.text_embeds,
                phase=phase, amp_dtype=self.amp_dtype, clip_grad_norm=cfg.optim.clip_grad_norm,
                where=f"epoch {self.epoch + 1}, step {self.step}",
            )  # fmt: skip
            loss = losses["loss"]
            if grad_norm is not None:
                sums["grad_norm"] += grad_norm
            self.step += 1
            n_steps += 1
            n_images += images.shape[0]
            for k, v in losses.items():
                sums[k] += float(v.detach())
            self._call("after_step")
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{cfg.optim.lr * factor:.2e}")
                bar.update(1)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        means = {k: v / max(1, n_steps) for k, v in sums.items()}
        means = dist.all_reduce_mean(means, self.device)  # loss terms averaged over processes
        self.epoch_metrics.update({f"train/{k}": v for k, v in sorted(means.items())})
        self.epoch_metrics["train/lr"] = (
            cfg.optim.lr * self.lr_factor()
        )  # base rate (the expert's is coupled)
        self.epoch_metrics["train/images_per_s"] = n_images * self.dist.world_size / max(elapsed, 1e-9)
        self.epoch_metrics["train/epoch_s"] = elapsed

    @torch.no_grad()
    def recalibrate_bn(self, batches: int) -> int:
        """Exact batch-norm statistics of the evaluated model over the first ``batches`` global batches of a
        fixed (seeded) order, identical on every process; the global random state is left as it was.

        Returns:
            The number of batch-norm layers recalibrated.
        """
        model = self.ema.module if self.ema is not None else unwrap(self.model)
        # The whole inputs, not training windows: the evaluated model sees whole inputs.
        dataset = self.train_set.whole_inputs() if hasattr(self.train_set, "whole_inputs") else self.train_set
        sampler = GlobalBatchSampler(len(dataset), self.cfg.data.batch_size, 0, 1, seed=self.cfg.seed + 1)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=self.cfg.data.workers,
                            collate_fn=collate)  # fmt: skip
        emb = self.text_embeds

        def forward(images: torch.Tensor) -> None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                model.forward_inference(images.to(self.device), emb)

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed)  # the same draws on every process, global state untouched
            return precise_bn(model, (images for images, _, _ in loader), forward, batches)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """COCO metrics of the EMA (or raw) model on the validation set."""
        from training.evaluate import evaluate_dataset

        model = self.ema.module if self.ema is not None else unwrap(self.model)
        was_training = model.training
        model.eval()
        try:
            result, _ = evaluate_dataset(
                model,
                self.val_set,
                self.val_text_embeds,
                batch_size=self.cfg.eval.batch_size,
                device=self.device,
                score_threshold=self.cfg.eval.score_threshold,
                iou_threshold=self.cfg.eval.iou_threshold,
                max_detections=self.cfg.eval.max_detections,
                amp_dtype=self.amp_dtype,
                progress=self.cfg.output.progress and self.dist.is_main,
            )
        finally:
            model.train(was_training)
        return result


@torch.no_grad()
def precise_bn(model: nn.Module, batches_of_images, forward, batches: int) -> int:
    """Replace the running statistics of ``model``'s batch norms by their exact average over ``batches``
    batches (the idea of detectron2's ``PreciseBN``).

    Only batch norms that are in training mode after ``model.train()`` are touched: frozen parts that keep
    eval mode through their own ``train()`` (the SAM encoder) keep their statistics.

    Args:
        model: the module whose statistics are recomputed (the EMA copy during training).
        batches_of_images: iterable of (B, 3, H, W) image batches.
        forward: ``forward(images)`` runs ``model`` on a batch (e.g. ``forward_inference`` with embeddings).
        batches: how many batches to average over.
    Returns:
        The number of batch-norm layers recomputed.
    """
    was_training = model.training
    model.train()
    bns = [
        m for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]  # fmt: skip
    momenta = [m.momentum for m in bns]
    try:
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average = exact mean over the batches seen
            for k, images in enumerate(batches_of_images):
                if k >= batches:
                    break
                forward(images)
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    return len(bns)


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ema: ModelEMA | None,
    images: torch.Tensor,
    targets: dict[str, torch.Tensor],
    text_embeds: torch.Tensor,
    *,
    phase: str = "joint",
    amp_dtype: torch.dtype | None = None,
    clip_grad_norm: float = 10.0,
    where: str = "",
) -> tuple[dict[str, torch.Tensor], float | None]:
    """One optimizer step: forward -> loss -> backward -> clip -> AdamW -> EMA (the loop's step; the
    throughput benchmark times exactly this).

    Args:
        model: the model, or its DDP wrapper (``wrap_ddp``).
        images: (B, 3, H, W) on the model's device. targets: ``batch_idx`` (M,), ``cls`` (M,), ``boxes`` (M, 4).
        text_embeds: (C, D) training vocabulary.
        phase: ``joint`` or ``pretrain`` (expert and head alone).
        where: position for error messages ("epoch 3, step 120").
    Returns:
        The loss terms (detached scalars) and the gradient norm before clipping (None without clipping).
    Raises:
        TrainingError: non-finite loss, or non-finite gradients outside fp16 AMP (where the scaler skips the
            step by design).
    """
    kwargs = {"stage": "pretrain"} if phase == "pretrain" else {}
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        if _is_ddp(model):
            losses = model(images, targets, text_embeds, **kwargs)
        else:
            losses = model.forward_training(images, targets, text_embeds, **kwargs)
    loss = losses["loss"]
    if not torch.isfinite(loss):
        terms = {k: float(v) for k, v in losses.items()}
        raise TrainingError(
            f"non-finite loss at {where}: {terms}; lower optim.lr or check the data set for degenerate boxes"
        )
    scaler.scale(loss).backward()
    grad_norm = None
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        if not torch.isfinite(norm) and not scaler.is_enabled():
            _raise_nonfinite_grads(unwrap(model), losses, where)
        grad_norm = float(norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(unwrap(model))
    return {k: v.detach() for k, v in losses.items()}, grad_norm


def _raise_nonfinite_grads(model: nn.Module, losses: dict[str, torch.Tensor], where: str) -> None:
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    terms = {k: round(float(v), 5) for k, v in losses.items()}
    raise TrainingError(
        f"non-finite gradients at {where} in {len(bad)} parameters (first: {', '.join(bad[:4])}); loss terms "
        f"{terms}. A loss term with an undefined gradient (e.g. a box loss on degenerate/padded boxes) is the "
        "usual cause."
    )


class TrainingForward(nn.Module):
    """Routes ``DDP.__call__`` to ``forward_training`` so DDP's gradient hooks see the training graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, images, targets, text_embeds, **kwargs):
        return self.module.forward_training(images, targets, text_embeds, **kwargs)


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def wrap_ddp(model: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """DDP around a ``TrainingForward`` adapter (so ``ddp(images, targets, emb)`` runs ``forward_training``)."""
    return torch.nn.parallel.DistributedDataParallel(
        TrainingForward(model),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused,
    )


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: CUDA only (CPU autocast is slower than fp32 for these convolutions)."""
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16
