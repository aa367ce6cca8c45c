"""Training configuration: one dataclass tree, read from YAML plus ``key=value`` dotted overrides.

Read once, at start, into typed objects. Unknown keys and wrong types are errors that name the key and the
file they came from (a typo must never silently fall back to a default). The resolved tree is written next
to the run's outputs (``runs/<name>/config.yaml``) so a run can be repeated from that file alone.

The model part of the tree is ``training.model.ModelConfig`` (owned by the model package); it is resolved
lazily so this module stays importable, and testable with a stand-in model config.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

if TYPE_CHECKING:  # resolved at load time, see ``_model_config_cls``
    from training.model import ModelConfig


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key and the source."""


@dataclass
class DataConfig:
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
    """

    root: str = "data/glass"
    train_split: str = "train"
    val_split: str = "val"
    train_classes: list[str] = field(default_factory=list)
    eval_classes: list[str] = field(default_factory=list)
    drop_images_with_unseen: bool = True
    batch_size: int = 16
    workers: int = 2
    flip: float = 0.5
    hsv: tuple[float, float, float] = (0.015, 0.5, 0.3)
    scale_jitter: float = 0.1
    max_images: int = 0
    crop: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.crop and (
            len(self.crop) != 4
            or self.crop[0] < 0
            or self.crop[1] < 0
            or self.crop[2] <= self.crop[0]
            or self.crop[3] <= self.crop[1]
        ):
            raise ValueError(
                f"data.crop: expected [x1, y1, x2, y2] with 0 <= x1 < x2 and 0 <= y1 < y2, got {self.crop}"
            )


@dataclass
class OptimConfig:
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


@dataclass
class ScheduleConfig:
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


@dataclass
class EmaConfig:
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


@dataclass
class EvalConfig:
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


@dataclass
class OutputConfig:
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


@dataclass
class TextConfig:
    """The frozen text encoder that turns class prompts into embeddings.

    Args:
        encoder: ``training.model.text_encoder.build_text_encoder`` spec, e.g.
            ``"open_clip:ViT-B-32:laion2b_s34b_b79k"``, ``"minilm"``, ``"random:512"``.
        cache_dir: on-disk cache of embeddings, keyed by encoder identity and a hash of the prompts
            ("" = ``$XDG_CACHE_HOME/rtvp/text_embeddings``).
    """

    encoder: str = "open_clip:ViT-B-32:laion2b_s34b_b79k"
    cache_dir: str = ""


@dataclass
class TrainConfig:
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
    model: ModelConfig = None  # type: ignore[assignment]  # filled with defaults by ``from_dict``
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    text: TextConfig = field(default_factory=TextConfig)
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


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _model_config_cls() -> type:
    from training.model import ModelConfig

    return ModelConfig


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str, localns: dict) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists to tuples, ints to floats)."""

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {key}: expected {expected}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail(f"a mapping of {tp.__name__} fields")
        return from_dict(tp, value, prefix=key, source=source, localns=localns)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source, localns)
            except ConfigError as e:
                errors.append(str(e))
        fail(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            fail("one of " + ", ".join(repr(c) for c in choices))
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail(f"a list ({_type_name(tp)})")
        args = typing.get_args(tp)
        if origin is list:
            return [_convert(v, args[0], f"{key}[{i}]", source, localns) for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", source, localns) for i, v in enumerate(value))
        if len(value) != len(args):
            fail(f"a list of {len(args)} values")
        return tuple(
            _convert(v, a, f"{key}[{i}]", source, localns)
            for i, (v, a) in enumerate(zip(value, args, strict=False))
        )
    if origin is dict:
        if not isinstance(value, dict):
            fail("a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads "1e-3" as a string; it is a number here
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            fail(tp.__name__)
        return value
    raise ConfigError(f"{source}: {key}: unsupported annotation {tp!r}")


def from_dict(
    cls: type, data: dict, *, prefix: str = "", source: str = "<config>", localns: dict | None = None
) -> Any:
    """Build dataclass ``cls`` from a nested mapping, strictly.

    Args:
        cls: the dataclass type.
        data: mapping of field name to value (nested mappings for nested dataclasses).
        prefix: dotted key of ``data`` inside the whole tree, for error messages.
        source: the file (or "command line") the values came from, for error messages.
        localns: extra names for resolving string annotations (``ModelConfig``).
    Raises:
        ConfigError: naming the key and the source, for an unknown key or a value of the wrong type.
    """
    localns = dict(localns or {})
    if "ModelConfig" not in localns and cls is TrainConfig:
        localns["ModelConfig"] = _model_config_cls()
    hints = typing.get_type_hints(cls, localns=localns)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{source}: unknown key {where}{unknown[0]!s}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; valid keys{' of ' + prefix if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if name in data:
            kwargs[name] = _convert(data[name], tp, key, source, localns)
        elif dataclasses.is_dataclass(tp) and f.default is None:
            kwargs[name] = from_dict(tp, {}, prefix=key, source=source, localns=localns)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a dataclass's own __post_init__ checks
        raise ConfigError(f"{source}: {prefix or cls.__name__}: {e}") from e


def to_dict(cfg: Any) -> dict:
    """Dataclass tree to plain YAML-able types (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _set_dotted(tree: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])} is not a section; cannot set {key}")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; values are YAML scalars/lists (``lr=1e-3``, ``hsv=[0,0,0]``)."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p.isidentifier() for p in key.split(".")):
            raise ConfigError(f"command line: override {item!r} is not of the form dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"command line: override {item!r}: value is not valid YAML: {e}") from e
        out.append((key, value))
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    model_config_cls: type | None = None,
) -> TrainConfig:
    """Read a YAML file, apply ``key=value`` overrides, validate into a ``TrainConfig``.

    Args:
        path: YAML file (None = all defaults).
        overrides: dotted ``key=value`` strings, applied in order after the file.
        model_config_cls: the model config dataclass (default ``training.model.ModelConfig``).
    Raises:
        ConfigError: unreadable file, unknown key, wrong type; the message names the key and the file
            (or "command line" for an override).
    """
    tree: dict = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        tree = loaded
    localns = {"ModelConfig": model_config_cls or _model_config_cls()}
    # Validate the file alone first, so an error in it names the file rather than the command line.
    from_dict(TrainConfig, tree, source=source, localns=localns)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value, "command line")
        from_dict(TrainConfig, tree, source=f"command line ({key}={value!r}) over {source}", localns=localns)
    return from_dict(TrainConfig, tree, source=source, localns=localns)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (readable back by ``load_config``)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
