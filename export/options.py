"""What one export is asked for, one small object per concern (``rtvp-export``'s flags, grouped).

    ExportOptions(
        target="openvino",                      # --target; half, batch, ship_onnx: how the target builds
        int8=Int8Options(                       # --int8 (None: float artifacts only)
            calibration=CalibrationOptions(data=Path("data/glass"), size=300),
            accuracy=AccuracyOptions(max_ap_drop=1.0),
        ),
        bundle=BundleOptions(vocab_mode="input", golden_count=4),
    )

``check_options`` refuses impossible combinations before any work is done, with the CLI flag's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from export.errors import ExportError
from export.int8_policy import DEFAULT_FLOAT_BLOCKS

VOCAB_MODES = ("folded", "input")
CLASS_THRESHOLD_MODES = ("best-f1", "none")


@dataclass(frozen=True)
class CalibrationOptions:
    """The calibration set of post-training INT8, built once and reused by every backend.

    Args:
        data: folder of line images or data set root (None: the data set the checkpoint was trained on).
        size: calibration images (300 recommended; fewer warns).
    """

    data: Path | None = None
    size: int = 300


@dataclass(frozen=True)
class AccuracyOptions:
    """The INT8 accuracy guard: COCO AP50 of the quantized artifact against its FP32 source.

    Args:
        data: annotated data set root (its ``val`` split); None: the calibration data set or the checkpoint's.
        size: at most this many held-out images.
        max_ap_drop: largest allowed AP50 drop in points; recorded as the bundle's accuracy budget
            (``accuracy.max_drop``) the runtime chooses artifacts within.
        force: write the bundle even when the guard fails (recorded in the manifest).
        class_thresholds: ``best-f1``: record each class's best-F1 score threshold of the exported artifact on
            the held-out images as the bundle's per-class default; ``none``: only the bundle's score threshold.
    """

    data: Path | None = None
    size: int = 200
    max_ap_drop: float = 1.0
    force: bool = False
    class_thresholds: str = "best-f1"


@dataclass(frozen=True)
class Int8Options:
    """Post-training INT8 quantization (``--int8``).

    Args:
        calibration: the calibration set.
        accuracy: the accuracy guard.
        keep_float: extra blocks (module names) kept out of INT8.
        float_blocks: regex over the model's top-level block names kept entirely float (default:
            ``int8_policy.DEFAULT_FLOAT_BLOCKS``); None quantizes every block (the head path stays float).
        accuracy_control: NNCF ``quantize_with_accuracy_control`` (OpenVINO) instead of plain PTQ.
        keep_fp32: target ``openvino``: also ship the FP32 IR (``openvino/model_fp32.xml``, compiled at f32)
            with its own golden outputs; the runtime times both and runs the faster within the budget.
    """

    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    accuracy: AccuracyOptions = field(default_factory=AccuracyOptions)
    keep_float: tuple[str, ...] = ()
    float_blocks: str | None = DEFAULT_FLOAT_BLOCKS
    accuracy_control: bool = False
    keep_fp32: bool = False


@dataclass(frozen=True)
class BundleOptions:
    """What the bundle records besides its artifacts.

    Args:
        vocab_mode: ``folded`` (embeddings constant in the graph) or ``input`` (second graph input).
        text_encoder: encoder spec for the vocabulary (default: the checkpoint's); its width must fit.
        golden_count: golden images.
        score_threshold: default score threshold (golden outputs are decoded with it).
        model_version: free-text version recorded in the manifest (default: run/checkpoint@epoch).
        overwrite: replace an existing bundle at ``out``.
    """

    vocab_mode: str = "folded"
    text_encoder: str | None = None
    golden_count: int = 4
    score_threshold: float = 0.25
    model_version: str | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class ExportOptions:
    """One export.

    Args:
        target: ``onnx`` (ONNX Runtime), ``openvino`` or ``tensorrt`` (``export.targets``).
        half: FP16 weights (OpenVINO IR) / FP16 engine (TensorRT).
        batch: OpenVINO IR with this static batch (-1: dynamic; None: the target's default, six views for
            OpenVINO). The ONNX stays dynamic.
        ship_onnx: ship ``model.onnx`` in the bundle. False (target ``openvino`` only): the ONNX is still
            exported, parity-checked and used as the FP32 reference of the accuracy guard, then left out.
        int8: post-training INT8 with the accuracy guard; None: float artifacts only.
        bundle: what the bundle records.
        progress: show tqdm progress bars.
    """

    target: str = "openvino"
    half: bool = False
    batch: int | None = None
    ship_onnx: bool = True
    int8: Int8Options | None = None
    bundle: BundleOptions = field(default_factory=BundleOptions)
    progress: bool = True


def check_options(options: ExportOptions) -> None:
    """Reject impossible option combinations before any work is done; the message names the CLI flag."""
    from export.targets import get_target

    target = get_target(options.target)  # unknown target: names the choices
    if options.bundle.vocab_mode not in VOCAB_MODES:
        raise ExportError(
            f"--vocab-mode {options.bundle.vocab_mode!r}: choose one of {', '.join(VOCAB_MODES)}"
        )
    if not 0.0 <= options.bundle.score_threshold <= 1.0:
        raise ExportError(f"--score-threshold must be in [0, 1], got {options.bundle.score_threshold}")
    if options.batch is not None and (options.batch == 0 or options.batch < -1):
        raise ExportError(f"--batch must be a positive batch size or -1 (dynamic), got {options.batch}")
    q = options.int8
    if q is not None:
        if q.accuracy.class_thresholds not in CLASS_THRESHOLD_MODES:
            raise ExportError(
                f"--class-thresholds must be one of {', '.join(CLASS_THRESHOLD_MODES)}, got "
                f"{q.accuracy.class_thresholds!r}"
            )
        if q.accuracy.max_ap_drop < 0:
            raise ExportError(f"--max-ap-drop must be >= 0 points, got {q.accuracy.max_ap_drop}")
        if q.calibration.size < 1:
            raise ExportError(f"--calib-size must be at least 1, got {q.calibration.size}")
    target.check(options)
