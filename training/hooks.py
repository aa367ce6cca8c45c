"""Extension points of the training loop (detectron2 ``HookBase`` style): evaluation, checkpoints, the metrics
log and plots are hooks, not trainer subclasses. Hooks run in list order; each reads and writes
``trainer.epoch_metrics`` so later hooks (checkpoint, log) see what earlier ones (evaluation) measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.engine import Trainer


class HookBase:
    """Override any of these; ``self.trainer`` is set by ``Trainer.register_hooks``."""

    trainer: Trainer

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def after_step(self) -> None: ...

    def after_epoch(self) -> None: ...


class PreciseBNHook(HookBase):
    """Recompute the batch-norm statistics of the evaluated (EMA) model before each evaluation and after the
    last epoch (the idea of detectron2's ``PreciseBN``).

    Running statistics trail the weights (momentum 0.03 forgets slowly): after a few hundred steps they no
    longer describe the features, and the model in eval mode scores far below the same weights in train
    mode. Averaging exact statistics over ``batches`` training batches fixes evaluation and the checkpoint
    that export uses. Frozen parts that stay in eval mode (the SAM encoder) are left untouched.
    """

    def __init__(self, batches: int, eval_hook: EvalHook | None):
        self.batches = batches
        self.eval_hook = eval_hook

    def after_epoch(self) -> None:
        t = self.trainer
        last = t.epoch + 1 == t.cfg.schedule.epochs
        if self.batches > 0 and (last or (self.eval_hook is not None and self.eval_hook.due())):
            t.epoch_metrics["train/precise_bn_layers"] = t.recalibrate_bn(self.batches)


class EvalHook(HookBase):
    """COCO evaluation of the EMA model on the validation split every ``every`` epochs and after the last.

    Runs on every process (each evaluates a shard; detections are gathered), writes ``val/<metric>`` and
    ``val_class/<name>/AP50`` into the epoch metrics.
    """

    def __init__(self, every: int):
        self.every = every

    def due(self) -> bool:
        t = self.trainer
        last = t.epoch + 1 == t.cfg.schedule.epochs
        if t.val_set is None or (t.phase_of(t.epoch) == "pretrain" and t.cfg.stage != "pretrain"):
            return (
                False  # the prompt branch is untrained during expert pre-training; evaluate the joint model
            )
        return last or (self.every > 0 and (t.epoch + 1) % self.every == 0)

    def after_epoch(self) -> None:
        if not self.due():
            return
        result = self.trainer.evaluate()
        m = self.trainer.epoch_metrics
        for k, v in result["metrics"].items():
            m[f"val/{k}"] = v
        for name, pc in result["per_class"].items():
            m[f"val_class/{name}/AP50"] = pc["AP50"]
        self.trainer.last_eval = result


class CheckpointHook(HookBase):
    """``last.pt`` every epoch, ``best.pt`` when the chosen validation metric improves, ``epoch_NNN.pt`` every
    ``keep_every`` epochs. Rank 0 only."""

    def __init__(self, best_metric: str, keep_every: int = 0):
        self.best_metric = best_metric
        self.keep_every = keep_every

    def after_epoch(self) -> None:
        t = self.trainer
        value = t.epoch_metrics.get(f"val/{self.best_metric}")
        improved = value is not None and not math.isnan(value) and (t.best is None or value > t.best)
        if improved:
            t.best = float(value)
            t.best_epoch = t.epoch + 1
        from training import dist
        from training.checkpoint import rng_state

        # Every process's random state (all must call the gather), so a DDP resume replays each one's draws.
        states = dist.all_gather_objects(rng_state()) if t.dist.distributed else None
        if not t.dist.is_main:
            return
        last = t.save(t.run_dir / "last.pt", states)
        if improved:
            t.save(t.run_dir / "best.pt", states)
        if self.keep_every and (t.epoch + 1) % self.keep_every == 0:
            import shutil

            shutil.copyfile(last, t.run_dir / f"epoch_{t.epoch + 1:03d}.pt")


class MetricsLogHook(HookBase):
    """Appends one JSON object per epoch to ``metrics.jsonl`` (loss terms, lr, throughput, val metrics)."""

    def __init__(self, path: Path):
        self.path = path

    def after_epoch(self) -> None:
        t = self.trainer
        if not t.dist.is_main:
            return
        row = {"epoch": t.epoch + 1, "step": t.step, **t.epoch_metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class PlotHook(HookBase):
    """Redraws the training curves (``plots/*.png``) after every epoch. Rank 0 only."""

    def __init__(self, metrics_path: Path, out_dir: Path):
        self.metrics_path, self.out_dir = metrics_path, out_dir

    def after_epoch(self) -> None:
        if self.trainer.dist.is_main:
            from training.plots import plot_training_curves

            plot_training_curves(self.metrics_path, self.out_dir)
