"""The staged export pipeline: checkpoint -> ONNX -> calibration set -> backend -> verify -> bundle.

``export_bundle`` is the library entry point (``rtvp-export`` is a thin CLI over it). Every stage is
checked before the next starts: ONNX by ``onnx.checker`` and parity with PyTorch, float backends by parity,
INT8 by COCO AP against its FP32 source on held-out images, the finished bundle by its own golden self-test
after ``load_manifest`` verified every hash.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export import embeddings as emb_mod
from export.accuracy import EvalSet, evaluate, load_eval_set
from export.bundle_writer import BundleStaging
from export.calibration import CalibrationSet, build_calibration_set, is_dataset
from export.errors import ExportError
from export.golden import check_golden, rig_images, write_golden
from export.int8_policy import DEFAULT_FLOAT_BLOCKS
from export.onnx_export import EMBEDDINGS, IMAGES, REGIONS, export_onnx
from export.runners import OnnxRuntimeRunner, OpenVINORunner, TorchRunner
from export.source import ExportSource
from export.verify import parity
from export.wrapper import build_wrapper
from rtvp_edge.bundle import (
    AccuracyInfo,
    Artifact,
    BundleError,
    BundleManifest,
    IOInfo,
    ModelInfo,
    PreprocessInfo,
    Thresholds,
    VocabularyClass,
    VocabularyInfo,
    load_manifest,
    read_verified,
    sha256_file,
    write_manifest,
)
from rtvp_edge.preprocess import preprocess

log = logging.getLogger("rtvp_export")

TARGETS = ("onnx", "openvino", "tensorrt")
# OpenVINO IR batch unless --batch says otherwise: one part of the reference rig (six views), the batch the
# runtime infers per part. Static shapes: bf16 1.08x, INT8 1.6x faster than the dynamic graph on this CPU.
DEFAULT_STATIC_BATCH = 6
VOCAB_MODES = ("folded", "input")
EMBEDDINGS_FILE = "text_embeddings.npy"
CENTER_FILE = "text_center.npy"


CLASS_THRESHOLD_MODES = ("best-f1", "none")


@dataclass
class ExportOptions:
    """Options of one export (the CLI flags).

    Args:
        target: ``onnx`` (ONNX Runtime), ``openvino`` or ``tensorrt``.
        half: FP16 weights (OpenVINO IR) / FP16 engine (TensorRT).
        int8: post-training INT8 quantization with the accuracy guard.
        calib_data: folder of line images or data set root for calibration.
        calib_size: calibration images (300 recommended; fewer warns).
        max_ap_drop: largest allowed AP50 drop of INT8 against FP32, in points; recorded as the bundle's
            accuracy budget (``accuracy.max_drop``) the runtime chooses artifacts within.
        keep_fp32: with ``int8`` and target ``openvino``: also ship the FP32 IR (``openvino/model_fp32.xml``,
            compiled at f32), with its own golden outputs; each artifact records its accuracy, and the
            runtime times both on its CPU and runs the faster one within the budget.
        ship_onnx: ship ``model.onnx`` in the bundle (ONNX Runtime, TensorRT rebuilds). False (target
            ``openvino`` only): the bundle carries only its IRs; the ONNX is still exported, parity-checked and
            used as the FP32 reference of the accuracy guard, then left out.
        force: write the bundle even when the accuracy guard fails (recorded in the manifest).
        accuracy_control: NNCF ``quantize_with_accuracy_control`` (OpenVINO) instead of plain PTQ.
        vocab_mode: ``folded`` (embeddings constant in the graph) or ``input`` (second graph input).
        eval_data: annotated data set root for the accuracy guard (its ``val`` split).
        eval_size: at most this many held-out images.
        keep_float: extra blocks (module names) kept out of INT8.
        float_blocks: regex over the model's top-level block names kept entirely float in INT8 (default:
            ``int8_policy.DEFAULT_FLOAT_BLOCKS``); None quantizes every block (the head path stays float).
        golden_count: golden images in the bundle.
        score_threshold: the bundle's default score threshold (golden outputs are decoded with it).
        class_thresholds: ``best-f1``: when the accuracy stage runs, record each class's best-F1 score
            threshold of the exported artifact on the held-out images as the bundle's per-class default
            (``thresholds.class_scores``); ``none``: only ``score_threshold``.
        overwrite: replace an existing bundle at ``out``.
        model_version: free-text version recorded in the manifest.
        progress: show tqdm progress bars.
        text_encoder: encoder spec for the vocabulary (default: the checkpoint's); its width must fit.
        batch: OpenVINO IR with this static batch (-1: dynamic; None: ``DEFAULT_STATIC_BATCH`` for OpenVINO,
            one part of the reference rig). OpenVINO's CPU plugin runs static shapes faster, INT8 much faster
            (benchmarks/results/export.md); the runtime pads/chunks to it. The ONNX stays dynamic.
    """

    target: str = "openvino"
    half: bool = False
    int8: bool = False
    calib_data: Path | None = None
    calib_size: int = 300
    max_ap_drop: float = 1.0
    keep_fp32: bool = False
    ship_onnx: bool = True
    force: bool = False
    accuracy_control: bool = False
    vocab_mode: str = "folded"
    eval_data: Path | None = None
    eval_size: int = 200
    keep_float: list[str] = field(default_factory=list)
    float_blocks: str | None = DEFAULT_FLOAT_BLOCKS
    golden_count: int = 4
    score_threshold: float = 0.25
    class_thresholds: str = "best-f1"
    overwrite: bool = False
    model_version: str | None = None
    progress: bool = True
    text_encoder: str | None = None
    batch: int | None = None


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


def check_options(options: ExportOptions) -> None:
    """Reject impossible option combinations before any work is done."""
    if options.target not in TARGETS:
        raise ExportError(f"--target {options.target!r}: choose one of {', '.join(TARGETS)}")
    if options.vocab_mode not in VOCAB_MODES:
        raise ExportError(f"--vocab-mode {options.vocab_mode!r}: choose one of {', '.join(VOCAB_MODES)}")
    if options.target == "onnx" and options.half:
        raise ExportError(
            "--half with --target onnx: ONNX Runtime's CPU provider has no fast FP16; "
            "use --target openvino --half or --target tensorrt --half"
        )
    if options.target == "tensorrt":
        from export.tensorrt import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            raise ExportError(f"--target tensorrt is not supported on this machine: {why}")
    if options.keep_fp32 and not (options.int8 and options.target == "openvino"):
        raise ExportError(
            "--keep-fp32 needs --int8 --target openvino (it keeps the FP32 IR beside the INT8 one)"
        )
    if not options.ship_onnx and options.target != "openvino":
        raise ExportError(
            f"--no-onnx needs --target openvino (the {options.target} target runs or builds from model.onnx)"
        )
    if options.accuracy_control and not (options.int8 and options.target == "openvino"):
        raise ExportError("--accuracy-control needs --int8 --target openvino (NNCF accuracy-controlled PTQ)")
    if not 0.0 <= options.score_threshold <= 1.0:
        raise ExportError(f"--score-threshold must be in [0, 1], got {options.score_threshold}")
    if options.class_thresholds not in CLASS_THRESHOLD_MODES:
        raise ExportError(
            f"--class-thresholds must be one of {', '.join(CLASS_THRESHOLD_MODES)}, got "
            f"{options.class_thresholds!r}"
        )
    if options.batch is not None and (options.batch == 0 or options.batch < -1):
        raise ExportError(f"--batch must be a positive batch size or -1 (dynamic), got {options.batch}")
    if options.batch is not None and options.batch > 0 and options.target != "openvino":
        raise ExportError("--batch (static batch) applies to --target openvino only")
    if options.max_ap_drop < 0:
        raise ExportError(f"--max-ap-drop must be >= 0 points, got {options.max_ap_drop}")
    if options.int8 and options.calib_size < 1:
        raise ExportError(f"--calib-size must be at least 1, got {options.calib_size}")


def _verification_images(
    source: ExportSource, calib: CalibrationSet | None, eval_set: EvalSet | None, count: int
) -> list[np.ndarray]:
    """Generated glass images for parity and golden samples (rig first, then held-out/calibration files)."""
    import cv2

    images = rig_images(count)
    if images:
        return images
    paths: list[Path] = []
    if eval_set is not None:
        paths = [rec.path for rec in eval_set.images[:count]]
    elif calib is not None:
        paths = list(calib.paths[:count])
    images = [img for p in paths if (img := cv2.imread(str(p), cv2.IMREAD_COLOR)) is not None]
    if not images:
        # No rig, no data: a plain grey frame with a dark blob still exercises the whole graph.
        h, w = source.preprocess.input_size
        img = np.full((h, w, 3), 170, np.uint8)
        cv2.circle(img, (w // 2, h // 2), max(2, min(h, w) // 10), (40, 40, 40), -1)
        images = [img]
    return images


def _resolve_eval_set(source: ExportSource, options: ExportOptions) -> EvalSet | None:
    root = options.eval_data
    if root is None and options.calib_data is not None and is_dataset(options.calib_data):
        root = options.calib_data
    if root is None:
        root = source.dataset_root()
    if root is None:
        return None
    val_split = str(source.provenance.get("val_split") or "val")
    if options.eval_data is None and not (Path(root) / "annotations" / f"{val_split}.json").is_file():
        return None
    return load_eval_set(root, val_split, options.eval_size)


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
        options: see ``ExportOptions``.
        vocabulary: classes to export; None: the checkpoint's vocabulary.
        cache_dir: text-embedding cache folder.
    Returns:
        The written manifest.
    Raises:
        ExportError: bad input, a failed stage check, or the INT8 accuracy guard (unless ``force``).
    """
    check_options(options)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    stages = ["embeddings", "calibration", "onnx", options.target, "accuracy", "golden", "bundle"]
    bar = tqdm(total=len(stages), desc="export", unit="stage", disable=not options.progress)
    try:

        def stage_done(name: str, t0: float) -> float:
            timings[name] = round(time.perf_counter() - t0, 2)
            bar.update(1)
            bar.set_postfix_str(name)
            return time.perf_counter()

        t = time.perf_counter()
        ckpt_emb = None if source.text_embeddings is None else source.text_embeddings.numpy()
        classes, embeddings = emb_mod.resolve_embeddings(
            source.classes,
            ckpt_emb,
            options.text_encoder or source.text_encoder,
            vocabulary,
            cache_dir,
            force_encode=options.text_encoder is not None,
        )
        class_names = [c.name for c in classes]
        emb_t = torch.from_numpy(embeddings)
        feed_emb = embeddings if options.vocab_mode == "input" else None
        spec = source.preprocess
        thresholds = Thresholds(score=options.score_threshold)
        static_batch = options.batch if options.batch is not None else -1
        if options.batch is None and options.target == "openvino":
            static_batch = DEFAULT_STATIC_BATCH
        t = stage_done("embeddings", t)

        # Held-out data and calibration are resolved up front so bad paths fail before minutes of work.
        eval_set = _resolve_eval_set(source, options) if options.int8 else None
        if options.int8 and eval_set is None and not options.force:
            raise ExportError(
                "--int8 needs held-out annotated images for the accuracy guard: pass --eval-data DATASET "
                "(a data set root with annotations/val.json) or --force to export without the guard"
            )
        calib_root = options.calib_data
        if options.int8 and calib_root is None:
            calib_root = source.dataset_root()
            if calib_root is None:
                raise ExportError(
                    "--int8 needs calibration images: pass --calib-data DIR (the checkpoint "
                    "records no data set that exists on this machine)"
                )

        # The calibration set is built once, before anything is exported, and reused by every backend.
        calib = None
        if options.int8:
            calib = build_calibration_set(
                calib_root,
                spec,
                options.calib_size,
                progress=options.progress,
                split=str(source.provenance.get("train_split") or "train"),
            )
        t = stage_done("calibration", t)

        staging = BundleStaging(out, overwrite=options.overwrite)
        with staging as tmp:
            np.save(tmp / EMBEDDINGS_FILE, embeddings)
            center_file = _write_text_center(tmp, source.model) if options.vocab_mode == "input" else None
            wrapper = build_wrapper(source.model, options.vocab_mode, emb_t)
            torch_runner = TorchRunner(wrapper, feed_emb)
            onnx_path = export_onnx(
                wrapper, tmp / "model.onnx", options.vocab_mode, spec.input_size, tuple(embeddings.shape)
            )
            t = stage_done("onnx", t)
            check_images = _verification_images(source, calib, eval_set, max(2, options.golden_count))
            ort_fp32 = OnnxRuntimeRunner(onnx_path, feed_emb)
            checks = {
                "onnxruntime": parity(
                    torch_runner, ort_fp32, check_images, spec, class_names, thresholds, "ONNX (ONNX Runtime)"
                )
            }

            artifacts = [Artifact(backend="onnxruntime", path="model.onnx", precision="fp32")]
            runners: dict[str, object] = {"onnxruntime": ort_fp32}
            calibration_info = None if calib is None else calib.describe()
            primary = "onnxruntime"
            int8_runner = None
            fp32_ir_runner = None  # the FP32 IR kept beside INT8 (--keep-fp32)
            if options.target == "onnx" and options.int8:
                from export.onnxruntime_int8 import quantize_qdq

                qpath, qinfo, kept = quantize_qdq(
                    onnx_path,
                    tmp / "model_int8.onnx",
                    calib,
                    source.model,
                    feed_emb,
                    options.keep_float,
                    options.float_blocks,
                )
                artifacts = [
                    Artifact(
                        backend="onnxruntime",
                        path="model_int8.onnx",
                        precision="int8",
                        kept_float=kept,
                        notes="QDQ: u8 activations, per-channel s8 weights",
                    )
                ]
                int8_runner = OnnxRuntimeRunner(qpath, feed_emb, precision="int8")
                runners = {"onnxruntime": int8_runner}
                calibration_info = {**calibration_info, **qinfo}
            elif options.target == "openvino":
                from export import openvino_backend as ovb

                primary = "openvino"
                xml = tmp / "openvino" / "model.xml"
                if options.int8:
                    import onnx

                    keep = ovb.keep_float_policy(
                        onnx.load(str(onnx_path), load_external_data=False),
                        [n for n, _ in source.model.named_children()],
                        options.float_blocks,
                        options.keep_float,
                    )
                    control = None
                    if options.accuracy_control:
                        control = _accuracy_control(
                            eval_set, spec, class_names, feed_emb, options.max_ap_drop
                        )
                    xml, qinfo = ovb.quantize_int8(onnx_path, xml, calib, keep, feed_emb, control)
                    if options.half:
                        _recompress_fp16(xml)
                    if static_batch > 0:
                        ovb.set_static_batch(xml, static_batch)
                    int8_runner = OpenVINORunner(xml, feed_emb, precision="int8")
                    exec_prec = int8_runner.execution_precision()
                    artifacts.append(
                        Artifact(
                            backend="openvino",
                            path="openvino/model.xml",
                            precision="int8",
                            kept_float=keep.reasons,
                            properties={"INFERENCE_PRECISION_HINT": exec_prec},
                            notes=f"INT8 by NNCF PTQ; float layers run in {exec_prec} on the export CPU",
                        )
                    )
                    runners["openvino"] = int8_runner
                    calibration_info = {**calibration_info, **qinfo}
                    if options.keep_fp32:
                        fp32_ir_runner = _keep_fp32_ir(
                            onnx_path, tmp, static_batch, feed_emb, torch_runner, check_images, spec,
                            class_names, thresholds, artifacts, checks,
                        )  # fmt: skip
                else:
                    ovb.convert_ir(onnx_path, xml, half=options.half)
                    if static_batch > 0:
                        ovb.set_static_batch(xml, static_batch)
                    ov_runner = OpenVINORunner(xml, feed_emb, precision="fp16" if options.half else "fp32")
                    exec_prec = ov_runner.execution_precision()
                    # bf16 execution differs from f32 by ~1e-2 relative; parity is checked at f32.
                    checks["openvino"] = parity(
                        torch_runner,
                        OpenVINORunner(xml, feed_emb, {"INFERENCE_PRECISION_HINT": "f32"}),
                        check_images,
                        spec,
                        class_names,
                        thresholds,
                        "OpenVINO IR (f32)",
                        score_atol=5e-3 if options.half else 1e-3,
                        box_atol=0.5 if options.half else 0.05,
                        boxes_of_scored=options.half,
                    )
                    artifacts.append(
                        Artifact(
                            backend="openvino",
                            path="openvino/model.xml",
                            precision="fp16" if options.half else "fp32",
                            properties={"INFERENCE_PRECISION_HINT": exec_prec},
                            notes=f"weights {'fp16' if options.half else 'fp32'}; runs in {exec_prec} on the export CPU",
                        )
                    )
                    runners["openvino"] = ov_runner
            elif options.target == "tensorrt":
                from export.tensorrt import export_tensorrt

                art, trt_runner = export_tensorrt(
                    onnx_path, tmp, calib, options.half, options.int8, feed_emb, source.model
                )
                artifacts.append(art)
                runners["tensorrt"] = trt_runner
                primary = "tensorrt"
            t = stage_done(options.target, t)

            accuracy = None
            if options.int8 and eval_set is not None:
                fp32, _ = evaluate(
                    ort_fp32, eval_set, spec, class_names, desc="evaluate fp32", progress=options.progress
                )
                q, points = evaluate(
                    int8_runner or runners[primary],
                    eval_set,
                    spec,
                    class_names,
                    desc="evaluate int8",
                    progress=options.progress,
                )
                accuracy = AccuracyInfo(
                    dataset=eval_set.describe(),
                    images=len(eval_set.images),
                    metric="AP50",
                    fp32=fp32,
                    artifact=q,
                    max_drop=options.max_ap_drop,
                    operating_points=points,
                )
                accuracy_guard(fp32, q, options.max_ap_drop, options.force, eval_set.describe())
                # Each artifact's own accuracy, so the runtime can choose within the budget without data:
                # the quantized one as measured, the FP32 ones as their (parity-checked) source.
                measured = int8_runner or runners[primary]
                quantized = {getattr(measured, "precision", None)} - {"fp32"}
                artifacts = [
                    a.model_copy(update={"accuracy": dict(q if a.precision in quantized else fp32)})
                    if a.precision in quantized or a.precision == "fp32"
                    else a
                    for a in artifacts
                ]
                if options.class_thresholds == "best-f1" and points:
                    thresholds = thresholds.model_copy(
                        update={"class_scores": {n: op["score"] for n, op in points.items()}}
                    )
                    log.info(
                        "per-class score thresholds (best F1 on %s): %s",
                        eval_set.describe(),
                        ", ".join(
                            f"{n} {op['score']:.3f} (P {op['precision']:.2f} R {op['recall']:.2f})"
                            for n, op in points.items()
                        ),
                    )
            t = stage_done("accuracy", t)

            # Golden outputs of the artifact the line runs (the bundle's primary backend): the runtime's
            # self-test compares its backend's outputs with them. Other artifacts were parity-checked above.
            golden_runners: dict = {primary: runners[primary]}
            if fp32_ir_runner is not None:  # two OpenVINO artifacts: golden outputs of each, by precision
                golden_runners = {
                    ("openvino", "int8"): runners["openvino"],
                    ("openvino", "fp32"): fp32_ir_runner,
                }
            golden = write_golden(
                tmp,
                check_images[: options.golden_count],
                golden_runners,
                spec,
                class_names,
                thresholds,
            )
            t = stage_done("golden", t)

            timings["total"] = round(time.perf_counter() - t_start, 2)
            n_params = sum(p.numel() for p in source.model.parameters())
            manifest = BundleManifest(
                created_utc=datetime.now(timezone.utc)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                model=ModelInfo(
                    name=source.model_name,
                    version=options.model_version or _version(source),
                    variant=source.model_name,
                    parameters=int(n_params),
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
                    embeddings_input=EMBEDDINGS if options.vocab_mode == "input" else None,
                    region_output=REGIONS if options.vocab_mode == "input" else None,
                    image_input=IMAGES,
                    batch=static_batch if primary == "openvino" else -1,
                ),
                vocabulary=VocabularyInfo(
                    mode=options.vocab_mode,
                    classes=classes,
                    text_encoder=options.text_encoder or source.text_encoder,
                    embeddings_file=EMBEDDINGS_FILE,
                    embeddings_sha256=sha256_file(tmp / EMBEDDINGS_FILE),
                    embedding_dim=int(embeddings.shape[1]),
                    center_file=center_file,
                ),
                thresholds=thresholds,
                artifacts=artifacts,
                accuracy=accuracy,
                calibration=calibration_info,
                toolchain=toolchain(),
                source_checkpoint={**source.describe(), "parity": checks, "timings_s": timings},
                golden=golden,
            )
            if not options.ship_onnx:  # --no-onnx: exported and used above, not shipped
                manifest = manifest.model_copy(
                    update={"artifacts": [a for a in manifest.artifacts if a.backend != "onnxruntime"]}
                )
                onnx_path.unlink()
            write_manifest(tmp, manifest)
            # Verify the finished bundle the way the runtime will: hashes, then the golden self-test of every
            # artifact loaded afresh from the bundle's own files.
            manifest = load_manifest(tmp)
            verify_bundle(tmp, manifest)
            staging.commit()
            bar.update(1)
    finally:
        bar.close()
    log.info("bundle written to %s in %.1f s", out, timings["total"])
    return manifest


def accuracy_guard(
    fp32: dict[str, float], artifact: dict[str, float], max_drop: float, force: bool, where: str
) -> float:
    """The INT8 accuracy guard: AP50 (points) of the artifact against its FP32 source.

    Returns the drop; raises ``ExportError`` when it exceeds ``max_drop`` unless ``force`` (then warns).
    """
    drop = round(fp32["AP50"] - artifact["AP50"], 3)
    log.info(
        "accuracy guard: AP50 fp32 %.2f, int8 %.2f (drop %.2f, allowed %.2f)",
        fp32["AP50"],
        artifact["AP50"],
        drop,
        max_drop,
    )
    if drop > max_drop:
        msg = (
            f"INT8 accuracy guard: AP50 dropped by {drop:.2f} points (FP32 {fp32['AP50']:.2f} -> "
            f"INT8 {artifact['AP50']:.2f}) on {where}, more than --max-ap-drop {max_drop:g}"
        )
        if not force:
            raise ExportError(
                msg + "; try --accuracy-control, a larger --calib-size, --keep-float BLOCK (python "
                "benchmarks/int8_sensitivity.py measures each block), "
                "or --force to write the bundle anyway"
            )
        log.warning("%s; written anyway (--force)", msg)
    return drop


def _keep_fp32_ir(
    onnx_path, tmp: Path, static_batch: int, feed_emb, torch_runner, check_images, spec, class_names,
    thresholds, artifacts: list, checks: dict,
):  # fmt: skip
    """``--keep-fp32``: convert the FP32 IR beside the INT8 one (same static batch), check its parity at
    f32, append its artifact (compiled at f32, so it is the FP32 reference on every CPU) and return its
    runner."""
    from export import openvino_backend as ovb

    props = {"INFERENCE_PRECISION_HINT": "f32"}
    xml = ovb.convert_ir(onnx_path, tmp / "openvino" / "model_fp32.xml", half=False)
    if static_batch > 0:
        ovb.set_static_batch(xml, static_batch)
    runner = OpenVINORunner(xml, feed_emb, props, precision="fp32")
    checks["openvino_fp32"] = parity(
        torch_runner, runner, check_images, spec, class_names, thresholds, "OpenVINO FP32 IR (f32)"
    )
    artifacts.append(
        Artifact(
            backend="openvino",
            path="openvino/model_fp32.xml",
            precision="fp32",
            properties=props,
            notes="FP32 IR kept beside INT8 (--keep-fp32): the runtime runs whichever is faster on its CPU",
        )
    )
    return runner


def _recompress_fp16(xml: Path) -> None:
    """Store the float (kept-out-of-INT8) weights of an INT8 IR as FP16 (``--int8 --half``)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    tmp = xml.with_name("fp16_tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=True)
    del model
    os.replace(tmp, xml)
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))


def _accuracy_control(eval_set: EvalSet | None, spec, class_names, feed_emb, max_ap_drop: float):
    """Validation samples and function for ``nncf.quantize_with_accuracy_control`` (AP50 in [0, 1]),
    computed exactly like the accuracy guard (``export.accuracy``)."""
    import cv2

    from export.accuracy import coco_metrics, predict

    if eval_set is None:
        raise ExportError("--accuracy-control needs held-out annotated images: pass --eval-data DATASET")
    samples = [
        preprocess([cv2.imread(str(rec.path), cv2.IMREAD_COLOR)], spec)[0][0] for rec in eval_set.images
    ]

    def validate(compiled_model, data) -> float:  # noqa: ARG001 - ``data`` holds the same images as eval_set
        out_boxes, out_scores = compiled_model.output("boxes"), compiled_model.output("scores")

        def runner(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            feeds = {IMAGES: batch}
            if feed_emb is not None:
                feeds[EMBEDDINGS] = feed_emb
            res = compiled_model(feeds)
            return res[out_boxes], res[out_scores]

        detections = predict(runner, eval_set, spec, class_names, desc="accuracy control")
        return coco_metrics(eval_set, detections, class_names)["AP50"] / 100.0

    return samples, validate, max_ap_drop / 100.0


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


def runner_for(bundle_dir: Path, manifest: BundleManifest, artifact: Artifact):
    """A fresh runner for one artifact of a written, verified bundle. Like the runtime, it loads the bytes
    it checked against the manifest's sha256 (``read_verified``), never a path a bundle could redirect."""
    from rtvp_edge.backends.base import load_embeddings

    feed = load_embeddings(bundle_dir, manifest)
    path = bundle_dir / artifact.path
    try:
        model = read_verified(bundle_dir, manifest, artifact.path, f"{artifact.backend} artifact")
        if artifact.backend == "onnxruntime":
            return OnnxRuntimeRunner(model, feed, precision=artifact.precision)
        if artifact.backend == "openvino":
            weights = None
            if artifact.path.endswith(".xml"):
                weights_rel = artifact.path[: -len(".xml")] + ".bin"
                weights = read_verified(bundle_dir, manifest, weights_rel, "openvino artifact weights")
            return OpenVINORunner(
                model, feed, artifact.properties, precision=artifact.precision, weights=weights
            )
        if artifact.backend == "tensorrt":
            from export.tensorrt import TensorRTRunner

            return TensorRTRunner(path, feed, engine=model)
    except BundleError as e:
        raise ExportError(str(e)) from None
    raise ExportError(f"unknown backend {artifact.backend!r}")


def verify_bundle(bundle_dir: str | os.PathLike, manifest: BundleManifest | None = None) -> dict[str, int]:
    """Hashes (``load_manifest``) and the golden self-test of every artifact that has golden samples (the
    primary one). Returns golden samples checked per backend."""
    bundle_dir = Path(bundle_dir)
    manifest = manifest or load_manifest(bundle_dir)
    with_golden = {g.backend for g in manifest.golden}
    if not with_golden:
        raise ExportError(f"bundle {bundle_dir} has no golden samples")
    out = {}
    for a in manifest.artifacts:
        if a.backend not in with_golden and None not in with_golden:
            continue
        several = sum(b.backend == a.backend for b in manifest.artifacts) > 1
        precision = a.precision if several else None
        if several and not manifest.golden_for(a.backend, precision):
            continue  # e.g. a second artifact without golden outputs of its own
        key = f"{a.backend} {a.precision}" if several else a.backend
        out[key] = check_golden(
            bundle_dir, manifest, a.backend, runner_for(bundle_dir, manifest, a), precision
        )
    return out
