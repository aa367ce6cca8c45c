"""``rtvp-export``: checkpoint -> bundle, and ``rtvp-export vocab`` for a new vocabulary of an input-mode bundle.

Examples::

    rtvp-export --int8                                   # newest run, its vocabulary and data, OpenVINO INT8
    rtvp-export --checkpoint runs/glass/best.pt --target openvino --int8 --calib-data data/glass \\
                --out bundles/glass-int8
    rtvp-export --checkpoint runs/glass/best.pt --target onnx --vocab-mode input --out bundles/glass-onnx
    rtvp-export vocab --bundle bundles/glass-onnx --vocab my_defects.yaml
    rtvp-export verify --bundle bundles/glass-int8       # hashes + golden self-test of every artifact
    rtvp-export sign --bundle bundles/glass-int8 --key vendor.pem   # optional Ed25519 signature

Exit status: 0 on success, 2 for bad input or a failed check (the message names the file/field/value).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from export.errors import ExportError
from export.int8_policy import DEFAULT_FLOAT_BLOCKS
from export.options import AccuracyOptions, BundleOptions, CalibrationOptions, ExportOptions, Int8Options

log = logging.getLogger("rtvp_export")


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rtvp-export",
        description="Export an RTVPNet training checkpoint into a bundle for the rtvp-edge runtime. "
        "Subcommands: 'rtvp-export vocab ...' (new vocabulary for an input-mode bundle), "
        "'rtvp-export verify ...' (check a bundle), 'rtvp-export sign ...' (sign a bundle).",
    )
    p.add_argument("--checkpoint", type=Path, help="training checkpoint (default: newest under --runs)")
    p.add_argument(
        "--runs", type=Path, default=Path("runs"), help="runs folder searched without --checkpoint"
    )
    p.add_argument(
        "--vocab", type=Path, help="vocabulary YAML ({name, prompt} list); default: the checkpoint's"
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="OpenVINO: static batch of the IR (default 6: one part of six views; -1 = dynamic)",
    )
    p.add_argument("--text-encoder", help="text-encoder spec for --vocab (default: the checkpoint's)")
    p.add_argument("--target", default="openvino", help="onnx | openvino | tensorrt (default openvino)")
    p.add_argument("--half", action="store_true", help="FP16 weights (OpenVINO) / FP16 engine (TensorRT)")
    p.add_argument("--int8", action="store_true", help="INT8 post-training quantization + accuracy guard")
    p.add_argument(
        "--calib-data",
        type=Path,
        help="folder of line images or a data set root (default: the data set the checkpoint was trained on)",
    )
    p.add_argument("--calib-size", type=int, default=300, help="calibration images (default 300)")
    p.add_argument(
        "--eval-data", type=Path, help="annotated data set root for the accuracy guard (val split)"
    )
    p.add_argument("--eval-size", type=int, default=200, help="held-out images for the guard (default 200)")
    p.add_argument("--max-ap-drop", type=float, default=1.0, help="allowed AP50 drop in points (default 1.0)")
    p.add_argument(
        "--keep-fp32",
        action="store_true",
        help="with --int8 --target openvino: also ship the FP32 IR; the runtime times both on its CPU and "
        "runs the faster one within the accuracy budget (--max-ap-drop)",
    )
    p.add_argument(
        "--no-onnx",
        action="store_true",
        help="--target openvino: ship only the OpenVINO IR(s), not model.onnx (a smaller bundle; ONNX Runtime "
        "and TensorRT cannot run it). The ONNX is still exported, checked and used for the FP32 reference",
    )
    p.add_argument("--force", action="store_true", help="write the bundle even if the accuracy guard fails")
    p.add_argument(
        "--accuracy-control",
        action="store_true",
        help="OpenVINO: NNCF quantize_with_accuracy_control (reverts layers until within the drop)",
    )
    p.add_argument("--vocab-mode", default="folded", help="folded (fastest) | input (swappable vocabulary)")
    p.add_argument(
        "--keep-float",
        action="append",
        default=[],
        metavar="BLOCK",
        help="keep this model block out of INT8 (repeatable)",
    )
    p.add_argument(
        "--float-blocks",
        default=DEFAULT_FLOAT_BLOCKS,
        metavar="REGEX",
        help="INT8: top-level model blocks kept entirely float (default %(default)r)",
    )
    p.add_argument(
        "--quantize-all-blocks",
        action="store_true",
        help="also quantize the blocks kept float by default (the general image encoder, the visual-text update)",
    )
    p.add_argument("--golden", type=int, default=4, help="golden images in the bundle (default 4)")
    p.add_argument("--score-threshold", type=float, default=0.25, help="bundle's default score threshold")
    p.add_argument(
        "--class-thresholds",
        choices=["best-f1", "none"],
        default="best-f1",
        help="INT8 with held-out data: record each class's best-F1 score threshold of the exported artifact "
        "as the bundle's per-class default (default %(default)s); none: --score-threshold only",
    )
    p.add_argument(
        "--out", type=Path, help="bundle folder (default: bundles/<run>-<checkpoint>-<target>-<precision>)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--cache-dir", type=Path, help="text-embedding cache folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def default_out(checkpoint: Path, target: str, int8: bool, half: bool) -> Path:
    """``bundles/<run>-<checkpoint stem>-<target>-<precision>``."""
    precision = "int8" if int8 else "fp16" if half else "fp32"
    return Path("bundles") / f"{checkpoint.parent.name}-{checkpoint.stem}-{target}-{precision}"


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """The ``ExportOptions`` of the export flags; flags that only mean something with ``--int8`` are
    refused without it."""
    int8_only = {
        "--keep-fp32": (args.keep_fp32, "it keeps the FP32 IR beside the INT8 one"),
        "--accuracy-control": (args.accuracy_control, "NNCF accuracy-controlled PTQ"),
    }
    for flag, (given, why) in int8_only.items():
        if given and not args.int8:
            raise ExportError(f"{flag} needs --int8 --target openvino ({why})")
    int8 = None
    if args.int8:
        int8 = Int8Options(
            calibration=CalibrationOptions(data=args.calib_data, size=args.calib_size),
            accuracy=AccuracyOptions(
                data=args.eval_data,
                size=args.eval_size,
                max_ap_drop=args.max_ap_drop,
                force=args.force,
                class_thresholds=args.class_thresholds,
            ),
            keep_float=tuple(args.keep_float),
            float_blocks=None if args.quantize_all_blocks else args.float_blocks,
            accuracy_control=args.accuracy_control,
            keep_fp32=args.keep_fp32,
        )
    return ExportOptions(
        target=args.target,
        half=args.half,
        batch=args.batch,
        ship_onnx=not args.no_onnx,
        int8=int8,
        bundle=BundleOptions(
            vocab_mode=args.vocab_mode,
            text_encoder=args.text_encoder,
            golden_count=args.golden,
            score_threshold=args.score_threshold,
            overwrite=args.overwrite,
        ),
        progress=not args.quiet,
    )


def run_export(args: argparse.Namespace) -> int:
    from export.embeddings import load_vocabulary
    from export.options import check_options
    from export.pipeline import export_bundle
    from export.source import find_newest_checkpoint, load_source

    options = options_from_args(args)
    check_options(options)  # before loading a large checkpoint
    vocabulary = load_vocabulary(args.vocab) if args.vocab is not None else None
    checkpoint = args.checkpoint or find_newest_checkpoint(args.runs)
    if args.checkpoint is None:
        log.info("using the newest checkpoint %s", checkpoint)
    if args.calib_data is not None and not args.calib_data.exists():
        raise ExportError(f"--calib-data {args.calib_data} not found")
    if args.eval_data is not None and not args.eval_data.exists():
        raise ExportError(f"--eval-data {args.eval_data} not found")
    source = load_source(checkpoint)
    out = args.out or default_out(checkpoint, args.target, args.int8, args.half)
    manifest = export_bundle(source, out, options, vocabulary=vocabulary, cache_dir=args.cache_dir)
    arts = ", ".join(f"{a.backend} {a.precision} ({a.path})" for a in manifest.artifacts)
    print(f"bundle {out}: {arts}")
    if manifest.accuracy is not None:
        a = manifest.accuracy
        print(f"accuracy on {a.dataset}: AP50 fp32 {a.fp32['AP50']:.2f}, artifact {a.artifact['AP50']:.2f}")
    for name, score in manifest.thresholds.class_scores.items():
        op = manifest.accuracy.operating_points[name]
        print(
            f"  threshold {name}: {score:.3f} (best F1 {op['f1']:.2f}: precision {op['precision']:.2f}, "
            f"recall {op['recall']:.2f})"
        )
    return 0


def run_vocab(argv: list[str]) -> int:
    from export.vocab_swap import swap_vocabulary

    p = argparse.ArgumentParser(
        prog="rtvp-export vocab", description="Write new text embeddings into an input-mode bundle."
    )
    p.add_argument("--bundle", type=Path, required=True, help="existing bundle (vocabulary mode 'input')")
    p.add_argument("--vocab", type=Path, required=True, help="vocabulary YAML ({name, prompt} list)")
    p.add_argument("--text-encoder", help="text-encoder spec (default: the one recorded in the bundle)")
    p.add_argument("--out", type=Path, help="write a new bundle here instead of updating --bundle in place")
    p.add_argument("--cache-dir", type=Path, help="text-embedding cache folder")
    args = p.parse_args(argv)
    manifest = swap_vocabulary(
        args.bundle, args.vocab, out=args.out, text_encoder=args.text_encoder, cache_dir=args.cache_dir
    )
    names = ", ".join(c.name for c in manifest.vocabulary.classes)
    print(
        f"bundle {args.out or args.bundle}: vocabulary now {len(manifest.vocabulary.classes)} classes ({names})"
    )
    return 0


def run_verify(argv: list[str]) -> int:
    from export.verify import verify_bundle

    p = argparse.ArgumentParser(
        prog="rtvp-export verify", description="Check a bundle's hashes and run its golden self-test."
    )
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument(
        "--public-key", type=Path, help="Ed25519 public key (PEM): also require a valid signature by it"
    )
    args = p.parse_args(argv)
    try:
        manifest = None
        if args.public_key is not None:
            from rtvp_edge.bundle import load_manifest

            manifest = load_manifest(args.bundle, public_key=args.public_key)
        checked = verify_bundle(args.bundle, manifest)
    except Exception as e:  # BundleError and ExportError alike: report, exit non-zero
        if not isinstance(e, ExportError) and type(e).__name__ != "BundleError":
            raise
        raise ExportError(str(e)) from None
    print(f"bundle {args.bundle}: OK ({', '.join(f'{b}: {n} golden' for b, n in checked.items())})")
    return 0


def run_sign(argv: list[str]) -> int:
    from rtvp_edge.bundle import sign_bundle

    p = argparse.ArgumentParser(
        prog="rtvp-export sign",
        description="Sign a verified bundle with an Ed25519 private key (writes CHECKSUMS.sha256.sig). Make a "
        "key pair with: openssl genpkey -algorithm ed25519 -out key.pem && "
        "openssl pkey -in key.pem -pubout -out key.pub.pem; the line file names key.pub.pem "
        "(model.public_key).",
    )
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key, unencrypted PEM")
    args = p.parse_args(argv)
    out = sign_bundle(args.bundle, args.key)
    print(f"bundle {args.bundle}: signed ({out})")
    return 0


def _exit_on_sigterm(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def install_sigterm_unwind() -> None:
    """Make SIGTERM (a timeout, a job scheduler, `kill`) unwind like Ctrl-C, so the bundle writer removes its
    partial folder instead of leaving it behind."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    install_sigterm_unwind()
    logging.basicConfig(level=logging.INFO, format="rtvp-export: %(message)s")
    for noisy in ("nncf", "openvino"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if argv and argv[0] == "vocab":
            return run_vocab(argv[1:])
        if argv and argv[0] == "verify":
            return run_verify(argv[1:])
        if argv and argv[0] == "sign":
            return run_sign(argv[1:])
        return run_export(_export_parser().parse_args(argv))
    except ExportError as e:
        print(f"rtvp-export: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from rtvp_edge.bundle import BundleError

        if isinstance(e, BundleError):
            print(f"rtvp-export: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
