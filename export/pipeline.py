"""The staged export pipeline: checkpoint -> vocabulary -> data -> ONNX -> backend -> accuracy -> golden -> bundle.

``export_bundle`` is the library entry point (``rtvp-export`` is a thin CLI over it); each stage is one
function below, the backend stage one module per target (``export.targets``). Every stage is checked before
the next starts: the ONNX by ``onnx.checker`` and parity with PyTorch, float artifacts by parity, INT8 by
COCO AP against its FP32 source on held-out images (``export.accuracy``), the finished bundle by the
runtime's own loader and golden self-test (``export.verify.verify_bundle``). Whatever runs an artifact is the
runtime's backend (``rtvp_edge.backends``) on the staged bundle: what export checked is what the line runs.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export import embeddings as emb_mod
from export.accuracy import EvalSet, guard_int8, load_eval_set
from export.bundle_writer import BundleStaging
from export.calibration import CalibrationSet, build_calibration_set, is_dataset
from export.errors import ExportError
from export.golden import check_images, golden_placeholders
from export.onnx_export import EMBEDDINGS, IMAGES, REGIONS, export_onnx
from export.options import ExportOptions, check_options
from export.source import ExportSource
from export.targets import BuildContext, Built, StagedBundle, Target, get_target
from export.verify import TorchReference, verify_bundle
from export.wrapper import build_wrapper
from rtvp_edge.bundle import (
    Artifact,
    BundleError,
    BundleManifest,
    IOInfo,
    ModelInfo,
    PreprocessInfo,
    Thresholds,
    VocabularyClass,
    VocabularyInfo,
    sha256_file,
)
from rtvp_edge.selftest import record_golden

log = logging.getLogger("rtvp_export")

EMBEDDINGS_FILE = "text_embeddings.npy"
CENTER_FILE = "text_center.npy"
ONNX_FILE = "model.onnx"


@dataclass
class Vocabulary:
    """The vocabulary stage's result: the classes and their (C, D) float32 L2-normalised embeddings."""

    classes: list[VocabularyClass]
    embeddings: np.ndarray
    text_encoder: str


@dataclass
class HeldOut:
    """The data stage's result: held-out images for the accuracy guard and the calibration set (INT8)."""

    eval_set: EvalSet | None
    calibration: CalibrationSet | None


def export_bundle(
    source: ExportSource,
    out: str | os.PathLike,
    options: ExportOptions,
    vocabulary: list[VocabularyClass] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> BundleManifest:
    """Export ``source`` into a verified bundle at ``out``.

    Args:
        source: the model and its metadata (``export.source.load_source``).
        out: bundle folder to create (atomically).
        options: see ``export.options.ExportOptions``.
        vocabulary: classes to export; None: the checkpoint's vocabulary.
        cache_dir: text-embedding cache folder.
    Returns:
        The written manifest.
    Raises:
        ExportError: bad input, a failed stage check, or the INT8 accuracy guard (unless ``force``).
    """
    check_options(options)
    target = get_target(options.target)
    stages = ["embeddings", "calibration", "onnx", options.target, "accuracy", "golden", "bundle"]
    stage = _Stages(stages, options.progress)
    try:
        with stage("embeddings"):
            vocab = vocabulary_stage(source, options, vocabulary, cache_dir)
        with stage("calibration"):
            data = data_stage(source, options)
        staging = BundleStaging(out, overwrite=options.bundle.overwrite)
        with staging as tmp:
            with stage("onnx"):
                ctx = onnx_stage(source, options, vocab, data, tmp)
            with stage(options.target):
                built = backend_stage(target, ctx)
            with stage("accuracy"):
                accuracy_stage(ctx, built)
            with stage("golden"):
                golden_stage(ctx, built)
            with stage("bundle"):
                manifest = bundle_stage(ctx, stage.timings)
            staging.commit()
    finally:
        stage.bar.close()
    log.info("bundle written to %s in %.1f s", out, stage.timings["total"])
    return manifest


def vocabulary_stage(
    source: ExportSource,
    options: ExportOptions,
    vocabulary: list[VocabularyClass] | None,
    cache_dir: str | os.PathLike | None,
) -> Vocabulary:
    """The classes to export and their text embeddings (the checkpoint's, or encoded once and cached)."""
    text_encoder = options.bundle.text_encoder or source.text_encoder
    ckpt_emb = None if source.text_embeddings is None else source.text_embeddings.numpy()
    classes, embeddings = emb_mod.resolve_embeddings(
        source.classes,
        ckpt_emb,
        text_encoder,
        vocabulary,
        cache_dir,
        force_encode=options.bundle.text_encoder is not None,
    )
    return Vocabulary(classes, embeddings, text_encoder)


def data_stage(source: ExportSource, options: ExportOptions) -> HeldOut:
    """Held-out data and the calibration set, resolved up front so bad paths fail before minutes of work.
    The calibration set is built once, before anything is exported, and reused by every backend."""
    q = options.int8
    if q is None:
        return HeldOut(None, None)
    eval_set = _resolve_eval_set(source, options)
    if eval_set is None and not q.accuracy.force:
        raise ExportError(
            "--int8 needs held-out annotated images for the accuracy guard: pass --eval-data DATASET "
            "(a data set root with annotations/val.json) or --force to export without the guard"
        )
    calib_root = q.calibration.data or source.dataset_root()
    if calib_root is None:
        raise ExportError(
            "--int8 needs calibration images: pass --calib-data DIR (the checkpoint "
            "records no data set that exists on this machine)"
        )
    calibration = build_calibration_set(
        calib_root,
        source.preprocess,
        q.calibration.size,
        progress=options.progress,
        split=str(source.provenance.get("train_split") or "train"),
    )
    return HeldOut(eval_set, calibration)


def onnx_stage(
    source: ExportSource, options: ExportOptions, vocab: Vocabulary, data: HeldOut, tmp: Path
) -> BuildContext:
    """The FP32 ONNX (dynamic batch, ``onnx.checker``) and its parity with PyTorch through the runtime's
    ONNX Runtime backend; returns the context the backend stage builds from."""
    mode = options.bundle.vocab_mode
    np.save(tmp / EMBEDDINGS_FILE, vocab.embeddings)
    center_file = _write_text_center(tmp, source.model) if mode == "input" else None
    wrapper = build_wrapper(source.model, mode, torch.from_numpy(vocab.embeddings))
    spec = source.preprocess
    export_onnx(wrapper, tmp / ONNX_FILE, mode, spec.input_size, tuple(vocab.embeddings.shape))
    onnx_art = Artifact(backend="onnxruntime", path=ONNX_FILE, precision="fp32")
    staged = StagedBundle(tmp, _manifest(source, options, vocab, [onnx_art], center_file, tmp))
    paths: list[Path] = []
    if data.eval_set is not None:
        paths = [rec.path for rec in data.eval_set.images]
    elif data.calibration is not None:
        paths = list(data.calibration.paths)
    ctx = BuildContext(
        bundle=staged,
        onnx=onnx_art,
        options=options,
        model=source.model,
        embeddings=vocab.embeddings if mode == "input" else None,
        calibration=data.calibration,
        eval_set=data.eval_set,
        reference=TorchReference(wrapper),
        check_images=check_images(spec, paths, max(2, options.bundle.golden_count)),
        spec=spec,
        class_names=[c.name for c in vocab.classes],
    )
    ctx.check_parity(onnx_art, "onnxruntime", "ONNX (ONNX Runtime)")
    return ctx


def backend_stage(target: Target, ctx: BuildContext) -> Built:
    """The target's artifacts (``Target.build``), recorded in the staged manifest with the static batch of
    an OpenVINO primary artifact and the quantization details."""
    built = target.build(ctx)
    calibration = None
    if ctx.calibration is not None:
        calibration = {**ctx.calibration.describe(), **built.calibration}
    batch = built.batch if target.backend == "openvino" else -1
    ctx.bundle.update(
        artifacts=built.artifacts,
        io=ctx.bundle.manifest.io.model_copy(update={"batch": batch}),
        calibration=calibration,
    )
    return built


def accuracy_stage(ctx: BuildContext, built: Built) -> None:
    """INT8 with held-out data: the accuracy guard (``export.accuracy.guard_int8``); records the measured
    accuracy of every artifact and the per-class thresholds."""
    if built.measured is None or ctx.eval_set is None:
        return
    info, artifacts, class_scores = guard_int8(ctx, built)
    thresholds = ctx.bundle.manifest.thresholds
    if class_scores:
        thresholds = thresholds.model_copy(update={"class_scores": class_scores})
    ctx.bundle.update(accuracy=info, artifacts=artifacts, thresholds=thresholds)


def golden_stage(ctx: BuildContext, built: Built) -> None:
    """Golden images, and the outputs the runtime records on them for each golden artifact (the primary one,
    and with ``--keep-fp32`` the FP32 IR): the line's start-up self-test compares its backend with them."""
    images = ctx.check_images[: ctx.options.bundle.golden_count]
    placeholders = golden_placeholders(ctx.root, images, built.golden)
    draft = ctx.bundle.draft(golden=placeholders)
    try:
        ctx.bundle.update(golden=record_golden(ctx.root, draft))
    except BundleError as e:
        raise ExportError(f"golden outputs: {e}") from None


def bundle_stage(ctx: BuildContext, timings: dict[str, float]) -> BundleManifest:
    """The final manifest (``--no-onnx``: without the ONNX, exported and used above but not shipped),
    checked like a line checks it at start (``verify_bundle``)."""
    timings["total"] = round(time.perf_counter() - timings["_start"], 2)
    m = ctx.bundle.manifest
    update = {
        "created_utc": _utc_now(),
        "toolchain": toolchain(),
        "source_checkpoint": {
            **(m.source_checkpoint or {}),
            "parity": ctx.checks,
            "timings_s": {k: v for k, v in timings.items() if not k.startswith("_")},
        },
    }
    if not ctx.options.ship_onnx:
        update["artifacts"] = [a for a in m.artifacts if a.backend != "onnxruntime"]
        ctx.onnx_path.unlink()
    ctx.bundle.update(**update)
    manifest = ctx.bundle.draft()
    verify_bundle(ctx.root, manifest)
    return manifest


def toolchain() -> dict[str, str]:
    """Versions of everything that shaped the artifact."""
    import onnx
    import onnxruntime

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        import openvino

        out["openvino"] = openvino.__version__
    except ImportError:
        pass
    try:
        import nncf

        out["nncf"] = nncf.__version__
    except ImportError:
        pass
    return out


class _Stages:
    """``with stages("onnx"): ...``: a progress bar over the pipeline's stages and ``timings`` (seconds per
    stage; ``_start`` is when the export began)."""

    def __init__(self, names: list[str], progress: bool):
        self.bar = tqdm(total=len(names), desc="export", unit="stage", disable=not progress)
        self.timings: dict[str, float] = {"_start": time.perf_counter()}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if name != "bundle":  # the bundle stage records the total before it ends
            self.timings[name] = round(time.perf_counter() - t0, 2)
        self.bar.update(1)
        self.bar.set_postfix_str(name)


def _resolve_eval_set(source: ExportSource, options: ExportOptions) -> EvalSet | None:
    acc, calib = options.int8.accuracy, options.int8.calibration
    root = acc.data
    if root is None and calib.data is not None and is_dataset(calib.data):
        root = calib.data
    if root is None:
        root = source.dataset_root()
    if root is None:
        return None
    val_split = str(source.provenance.get("val_split") or "val")
    if acc.data is None and not (Path(root) / "annotations" / f"{val_split}.json").is_file():
        return None
    return load_eval_set(root, val_split, acc.size)


def _manifest(
    source: ExportSource,
    options: ExportOptions,
    vocab: Vocabulary,
    artifacts: list[Artifact],
    center_file: str | None,
    tmp: Path,
) -> BundleManifest:
    """The manifest as far as it is known after the ONNX export (artifacts, accuracy, golden samples and
    file hashes are filled in by the later stages)."""
    spec = source.preprocess
    mode = options.bundle.vocab_mode
    return BundleManifest(
        created_utc=_utc_now(),
        model=ModelInfo(
            name=source.model_name,
            version=options.bundle.model_version or _version(source),
            variant=source.model_name,
            parameters=int(sum(p.numel() for p in source.model.parameters())),
            encoder=_encoder_provenance(source),
        ),
        preprocess=PreprocessInfo(
            input_size=tuple(spec.input_size),
            pad_value=spec.pad_value,
            color=spec.color,
            mean=tuple(spec.mean),
            std=tuple(spec.std),
            crop=None if spec.crop is None else tuple(spec.crop),
        ),
        io=IOInfo(
            embeddings_input=EMBEDDINGS if mode == "input" else None,
            region_output=REGIONS if mode == "input" else None,
            image_input=IMAGES,
            batch=-1,
        ),
        vocabulary=VocabularyInfo(
            mode=mode,
            classes=vocab.classes,
            text_encoder=vocab.text_encoder,
            embeddings_file=EMBEDDINGS_FILE,
            embeddings_sha256=sha256_file(tmp / EMBEDDINGS_FILE),
            embedding_dim=int(vocab.embeddings.shape[1]),
            center_file=center_file,
        ),
        thresholds=Thresholds(score=options.bundle.score_threshold),
        artifacts=artifacts,
        accuracy=None,
        calibration=None,
        toolchain={},
        source_checkpoint=source.describe(),
        golden=[],
    )


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _encoder_provenance(source) -> dict[str, str] | None:
    """The general encoder's provenance recorded by rtvp-train (None for older checkpoints)."""
    prov = source.provenance.get("general_encoder")
    return {str(k): str(v) for k, v in prov.items()} if isinstance(prov, dict) else None


def _write_text_center(bundle_dir: Path, model: torch.nn.Module) -> str | None:
    """Write the model's text centre (RTVPNet ``text_center`` (D,), subtracted from every class embedding in
    the graph) for enrolment from exemplars; None when the model does not centre its text embeddings."""
    center = getattr(model, "text_center", None)
    if not isinstance(center, torch.Tensor):
        return None
    np.save(bundle_dir / CENTER_FILE, center.detach().float().cpu().numpy())
    return CENTER_FILE


def _version(source: ExportSource) -> str:
    if source.checkpoint is None:
        return "in-memory"
    epoch = source.provenance.get("epoch")
    run = source.checkpoint.parent.name
    return f"{run}/{source.checkpoint.stem}" + (f"@epoch{epoch}" if epoch is not None else "")
