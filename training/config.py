"""Training configuration: one pydantic tree, read from YAML plus ``key=value`` dotted overrides.

Read once, at start, into typed, frozen objects. Unknown keys and wrong types are errors in the format of every
YAML file of the project (``rtvp_edge.yaml_config``): the file, the line and the key, e.g.::

    configs/glass.yaml:7: optim.lr: Input should be a valid number (got 'fast')
    command line (data.batch_size=big): data.batch_size: Input should be a valid integer (got 'big')

A typo never falls back to a default silently. The resolved tree is written next to the run's outputs
(``runs/<name>/config.yaml``) so a run can be repeated from that file alone.

The model part of the tree is ``training.model.ModelConfig`` (owned by the model package); it is resolved
lazily so this module stays importable without torch, and testable with a stand-in model config.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, create_model, field_validator

from rtvp_edge.strict import StrictModel
from rtvp_edge.yaml_config import ConfigError, read_yaml, validate_tree, yaml_value

__all__ = [
    "ConfigError", "DataConfig", "EmaConfig", "EvalConfig", "OptimConfig", "OutputConfig", "ScheduleConfig",
    "TextConfig", "TrainConfig", "load_config", "parse_overrides", "save_config", "to_dict", "train_config_class",
]  # fmt: skip


class DataConfig(StrictModel):
    """Where the data set lives and how samples are prepared.

    Args:
        root: data set root in the MMIOC/COCO layout (``Images/``, ``labels/``, ``annotations/<split>.json``).
        train_split: split trained on.
        val_split: split evaluated on during training ("" disables evaluation).
        train_classes: classes trained on (names); empty = all classes of the data set (closed protocol)
            or the seen classes (open protocol).
        eval_classes: classes evaluated; empty = the training classes (closed) or the unseen classes (open).
        drop_images_with_unseen: open protocol: leave training images that show a held-out class out of the
            training set altogether, so unseen defects are never taught as background.
        batch_size: images per optimizer step over all processes (the global batch); each of N processes
            takes ``batch_size / N``, so results do not depend on the number of processes.
        workers: DataLoader worker processes per training process.
        flip: probability of a horizontal flip.
        hsv: (hue, saturation, value) maximum relative gains of the colour jitter; 0 disables each.
        scale_jitter: maximum relative zoom in/out about the image centre after letterboxing.
        max_images: use at most this many training images (0 = all); for smoke runs.
        crop: [x1, y1, x2, y2] region of every camera image the model sees (camera pixels, before the
            letterbox); empty = the whole image. Recorded in the checkpoint's preprocessing and the bundle.
        patch: [height, width] training window cut from the model input at full resolution (multiples of
            32, at most ``model.img_size``, in its order); empty = train on the whole input. Training only: evaluation,
            batch-norm recalibration, export and the runtime see the whole input (``training.augment.
            random_patch``).
        patch_on_defect: share of windows placed over a target box (the rest lie anywhere).
    """

    root: str = "data/glass"
    train_split: str = "train"
    val_split: str = "val"
    train_classes: list[str] = []
    eval_classes: list[str] = []
    drop_images_with_unseen: bool = True
    batch_size: int = 16
    workers: int = 2
    flip: float = 0.5
    hsv: tuple[float, float, float] = (0.015, 0.5, 0.3)
    scale_jitter: float = 0.1
    max_images: int = 0
    crop: list[int] = []
    patch: list[int] = []
    patch_on_defect: float = Field(0.8, ge=0.0, le=1.0)

    @field_validator("patch")
    @classmethod
    def _patch_size(cls, v: list[int]) -> list[int]:
        if v and (len(v) != 2 or any(s < 32 or s % 32 for s in v)):
            raise ValueError(f"expected [height, width], each a multiple of 32 and >= 32, got {v}")
        return v

    @field_validator("crop")
    @classmethod
    def _crop_box(cls, v: list[int]) -> list[int]:
        if v and (len(v) != 4 or v[0] < 0 or v[1] < 0 or v[2] <= v[0] or v[3] <= v[1]):
            raise ValueError(f"expected [x1, y1, x2, y2] with 0 <= x1 < x2 and 0 <= y1 < y2, got {v}")
        return v


class OptimConfig(StrictModel):
    """AdamW with the paper's defaults (lr 2e-3, weight decay 0.025).

    Args:
        lr: base learning rate (the expert's coupled rate is derived by the model's ``param_groups``).
        weight_decay: decoupled weight decay (not applied to norms and biases).
        betas: AdamW betas.
        clip_grad_norm: maximum global gradient norm; 0 disables clipping.
    """

    name: Literal["adamw"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.025
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad_norm: float = 10.0


class ScheduleConfig(StrictModel):
    """Learning-rate schedule: linear warm-up then cosine or linear decay, in optimizer steps.

    Args:
        epochs: number of passes over the training set (all phases together).
        pretrain_epochs: the first epochs of a ``stage=joint`` run train the expert alone (expert
            pre-training, TPAMI Eq. 1) when ``model.pretrain`` is on; then joint training with dynamic expert
            updating. Each phase has its own optimizer and warm-up + decay.
        warmup_epochs: length of the linear warm-up (fractions allowed).
        warmup_start: learning-rate factor at step 0 of the warm-up.
        kind: decay after the warm-up.
        final_factor: learning-rate factor reached at the last step.
    """

    epochs: int = 200
    pretrain_epochs: int = 0
    warmup_epochs: float = 3.0
    warmup_start: float = 0.01
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    final_factor: float = 0.01


class EmaConfig(StrictModel):
    """Exponential moving average of the weights (evaluated and exported instead of the raw weights).

    Args:
        enabled: keep an EMA copy.
        decay: asymptotic decay.
        tau: ramp (in updates) of the effective decay ``decay * (1 - exp(-updates / tau))``, so early, still
            random weights are forgotten quickly.
    """

    enabled: bool = True
    decay: float = 0.9998
    tau: float = 2000.0


class EvalConfig(StrictModel):
    """Evaluation during training (COCO metrics with pycocotools on ``data.val_split``).

    Args:
        every: evaluate every this many epochs (and always after the last); 0 = only after the last.
        score_threshold: minimum score kept for the COCO evaluation (low, so the PR curve is complete).
        iou_threshold: class-wise NMS IoU of ``rtvp_edge.postprocess.decode_detections``.
        max_detections: detections kept per image.
        batch_size: images per forward pass.
        best_metric: metric that decides ``best.pt``.
        precise_bn_batches: before each evaluation (and after the last epoch) recompute the batch-norm
            statistics of the evaluated model over this many training batches (0 = off); short runs need it.
    """

    every: int = 1
    score_threshold: float = 0.001
    iou_threshold: float = 0.6
    max_detections: int = 100
    batch_size: int = 8
    best_metric: Literal["AP", "AP50", "AP75"] = "AP50"
    precise_bn_batches: int = 16


class OutputConfig(StrictModel):
    """Where the run writes.

    Args:
        dir: parent directory of runs.
        keep_every: also keep ``epoch_NNN.pt`` every this many epochs (0 = only ``last.pt`` and ``best.pt``).
        plots: draw curves after each epoch (matplotlib).
        progress: show tqdm progress bars (rank 0 only).
        overwrite: reuse an existing ``runs/<name>`` (its metrics log is started afresh); without it an
            existing run is an error, so nothing is lost by a repeated command.
    """

    dir: str = "runs"
    keep_every: int = 0
    plots: bool = True
    progress: bool = True
    overwrite: bool = False


class TextConfig(StrictModel):
    """The frozen text encoder that turns class prompts into embeddings.

    Args:
        encoder: ``training.model.text_encoder.build_text_encoder`` spec, e.g.
            ``"open_clip:ViT-B-32:laion2b_s34b_b79k"``, ``"minilm"``, ``"random:512"``.
        cache_dir: on-disk cache of embeddings, keyed by encoder identity and a hash of the prompts
            ("" = ``$XDG_CACHE_HOME/rtvp/text_embeddings``).
    """

    encoder: str = "open_clip:ViT-B-32:laion2b_s34b_b79k"
    cache_dir: str = ""


class TrainConfig(StrictModel):
    """Everything one training run needs.

    Args:
        name: run name; outputs go to ``<output.dir>/<name>/``.
        stage: ``pretrain`` trains the expert alone as a closed-set detector on the training classes
            (TPAMI Eq. 1); ``joint`` trains the full RTVPNet with dynamic expert updating.
        protocol: ``closed`` trains and evaluates on the same classes; ``open`` trains on the seen classes
            and evaluates on the unseen ones given only their text prompts.
        init_from: checkpoint whose model weights initialise this run (e.g. the expert pre-training run).
        resume: checkpoint of this run to continue exactly where it stopped (weights, EMA, optimizer,
            schedule position, random state).
        seed: seed of every random draw (data order, augmentation, model).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: mixed precision on CUDA (``auto`` = bf16 where supported, else fp16); ignored on CPU.
        sync_bn: synchronise batch-norm statistics across processes (CUDA only; gloo on CPU cannot).
        threads: torch CPU threads per process (0 = torch's default).
    """

    name: str = "rtvpnet"
    # The model part: ``training.model.ModelConfig`` (or a stand-in), typed by ``train_config_class``.
    model: Any = None
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    ema: EmaConfig = EmaConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    text: TextConfig = TextConfig()
    stage: Literal["pretrain", "joint"] = "joint"
    protocol: Literal["closed", "open"] = "closed"
    init_from: str = ""
    resume: str = ""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    sync_bn: bool = True
    threads: int = 0


# --------------------------------------------------------------------------------------------- loading


def _model_config_cls() -> type[BaseModel]:
    from training.model import ModelConfig

    return ModelConfig


@functools.cache
def train_config_class(model_config_cls: type[BaseModel]) -> type[TrainConfig]:
    """``TrainConfig`` with its ``model`` section typed as ``model_config_cls`` (defaults when absent)."""
    return create_model(
        "TrainConfig",
        __base__=TrainConfig,
        __module__=__name__,
        model=(model_config_cls, Field(default_factory=model_config_cls)),
    )


def to_dict(cfg: BaseModel) -> dict:
    """The configuration tree as plain YAML-able types (tuples become lists)."""
    return cfg.model_dump(mode="json")


def _set_dotted(tree: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])} is not a section; cannot set {key}")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, str, Any]]:
    """Parse ``key=value`` strings into (item, key, value); values are read as YAML values of a file would be
    (``lr=1e-3``, ``hsv=[0,0,0]``)."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p.isidentifier() for p in key.split(".")):
            raise ConfigError(f"command line: override {item!r} is not of the form dotted.key=value")
        value = yaml_value(raw, f"command line ({item})") if raw != "" else ""
        out.append((item, key, value))
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    model_config_cls: type[BaseModel] | None = None,
) -> TrainConfig:
    """Read a YAML file, apply ``key=value`` overrides, validate into a ``TrainConfig``.

    Args:
        path: YAML file (None = all defaults).
        overrides: dotted ``key=value`` strings, applied in order after the file.
        model_config_cls: the model config class (default ``training.model.ModelConfig``).
    Raises:
        ConfigError: unreadable file, unknown key, wrong type: ``<file>:<line>: <key>: <problem>`` for the
            file, ``command line (<key>=<value>): <key>: <problem>`` for an override.
    """
    cls = train_config_class(model_config_cls or _model_config_cls())
    tree: dict = {}
    root = None
    source = "<defaults>"
    if path is not None:
        source = str(path)
        tree, root = read_yaml(path, "config file")
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}:1: the top level must be a mapping of keys, got {type(tree).__name__}")
    # Validate the file alone first, so an error in it names the file and its line.
    cfg = validate_tree(cls, tree, root, source)
    for item, key, value in parse_overrides(overrides or []):
        where = f"command line ({item})"
        _set_dotted(tree, key, value, where)
        cfg = validate_tree(cls, tree, None, where)
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (readable back by ``load_config``)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
