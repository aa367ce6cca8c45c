"""Backends side by side on this CPU, one run: PyTorch, ONNX Runtime, OpenVINO f32, OpenVINO's default float
mode (bf16 where the CPU has bf16 units), OpenVINO INT8 (SAM encoder kept in float, the default policy) and
OpenVINO INT8 with every block quantized; latency (batch 1), throughput (batch = one part, 6 views), AP50 on
held-out generated glass images, export and calibration time. Then the per-block INT8 decision: the MobileSAM
encoder and the C2F expert alone, bf16 against INT8.

    /work/venv/bin/python benchmarks/bench_backends.py --out benchmarks/results/export.md
    /work/venv/bin/python benchmarks/bench_backends.py --checkpoint runs/glass/best.pt --data data/glass/closed

Each backend runs its iterations back to back, in two sweeps (forward, then reverse order; medians), so
background load on a shared machine hits every backend alike. Without --checkpoint the model has random weights: latencies are
real, AP50 is not meaningful (all ~0) and says so in the output.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402

from export.accuracy import evaluate, load_eval_set  # noqa: E402
from export.calibration import build_calibration_set  # noqa: E402
from export.int8_policy import DEFAULT_FLOAT_BLOCKS  # noqa: E402
from export.openvino_backend import set_static_batch  # noqa: E402
from export.options import (  # noqa: E402
    AccuracyOptions,
    BundleOptions,
    CalibrationOptions,
    ExportOptions,
    Int8Options,
)
from export.pipeline import export_bundle  # noqa: E402
from export.source import ExportSource, load_source  # noqa: E402
from export.verify import TorchReference  # noqa: E402
from export.wrapper import build_wrapper  # noqa: E402
from rtvp_edge.backends import open_model  # noqa: E402
from rtvp_edge.bundle import VocabularyClass  # noqa: E402
from rtvp_edge.preprocess import PreprocessSpec  # noqa: E402
from rtvp_edge.vocabulary import GLASS_DEFECTS  # noqa: E402

log = logging.getLogger("bench")

# INT8 policies compared: label -> regex of top-level blocks kept entirely float (None: quantize all blocks;
# the head's output path stays float in every policy).
INT8_POLICIES = {
    "OpenVINO INT8 (all blocks)": None,
    "OpenVINO INT8 (SAM float)": DEFAULT_FLOAT_BLOCKS,
    "OpenVINO INT8 (expert only)": r"^(?!expert$)",
}


def random_source(variant: str) -> ExportSource:
    from training.model import ModelConfig, build_model
    from training.model.text_encoder import build_text_encoder

    torch.manual_seed(0)
    cfg = ModelConfig(variant=variant)
    model = build_model(cfg).eval()
    classes = [VocabularyClass(name=c.name, prompt=c.prompt) for c in GLASS_DEFECTS]
    emb = build_text_encoder(f"random:{cfg.text_dim}").encode([c.prompt for c in classes])
    size = cfg.resolved().img_size
    spec = PreprocessSpec((size, size), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return ExportSource(
        model, variant, spec, classes, f"random:{cfg.text_dim}", emb.float(), {}, None, cfg.model_dump()
    )


def static_ir(xml: Path, batch: int, workdir: Path) -> Path:
    """A copy of an IR compiled for a static ``batch`` (``export.openvino_backend.set_static_batch``)."""
    import shutil

    folder = workdir / f"static{batch}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(xml, folder / xml.name)
    shutil.copy(xml.with_suffix(".bin"), folder / xml.with_suffix(".bin").name)
    return set_static_batch(folder / xml.name, batch)


def time_sweeps(runners: dict, batch: np.ndarray, iters: int) -> dict[str, float]:
    """Median seconds per call of every runner (``runner(batch)``) on ``batch``.

    Each runner runs its iterations back to back (interleaving single calls would let one runtime's
    spinning worker threads steal the CPU from the next), in two sweeps, forward then reverse order, so a
    change of background load on the shared machine hits the backends alike.
    """
    times: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for sweep in (order, order[::-1]):
        for name in sweep:
            r = runners[name]
            r(batch)  # warm-up: first-call allocations and lazy compilation
            for _ in range(max(1, iters // 2)):
                t0 = time.perf_counter()
                r(batch)
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


class _Block(torch.nn.Module):
    """One block of the model alone, returning a tuple of tensors (for the per-block INT8 decision)."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, images: torch.Tensor):
        out = self.block(images)
        return tuple(out.values()) if isinstance(out, dict) else out


def block_decision(source: ExportSource, calib, workdir: Path, rounds: int) -> list[tuple]:
    """Latency of the SAM encoder and the expert alone: OpenVINO f32, bf16 (default) and INT8."""
    import nncf
    import openvino as ov

    from export.onnx_export import trace_friendly_batch

    rows = []
    size = source.preprocess.input_size
    x = np.stack([calib.sample(i)[0] for i in range(1)])
    for name in ("sam", "expert"):
        block = getattr(source.model, name, None)
        if block is None:
            continue
        onnx_path = workdir / f"{name}.onnx"
        with torch.no_grad(), trace_friendly_batch():
            torch.onnx.export(
                _Block(block).eval(),
                (torch.zeros(1, 3, *size),),
                str(onnx_path),
                dynamo=False,
                input_names=["images"],
                opset_version=17,
            )
        model = ov.convert_model(str(onnx_path))
        samples = [calib.sample(i) for i in range(len(calib))]
        t0 = time.perf_counter()
        qmodel = nncf.quantize(
            ov.convert_model(str(onnx_path)),
            nncf.Dataset(samples),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(samples),
        )
        qtime = time.perf_counter() - t0
        core = ov.Core()
        variants = {
            "f32": core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}),
            "bf16 (default)": core.compile_model(model, "CPU"),
            "int8": core.compile_model(qmodel, "CPU"),
        }
        t = time_sweeps({k: (lambda b, c=c: c(b)) for k, c in variants.items()}, x, rounds)
        rows.append((name, t["f32"] * 1e3, t["bf16 (default)"] * 1e3, t["int8"] * 1e3, qtime))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="trained checkpoint (default: random rtvpnet_s)")
    p.add_argument("--variant", default="rtvpnet_s", help="model variant without --checkpoint")
    p.add_argument("--data", type=Path, help="data set root (default: generate one with the rig)")
    p.add_argument("--containers", type=int, default=24, help="containers of the generated data set")
    p.add_argument("--calib-size", type=int, default=64)
    p.add_argument("--eval-size", type=int, default=24)
    p.add_argument("--rounds", type=int, default=8, help="timed iterations (batch 1); batch 6 gets half")
    p.add_argument("--threads", type=int, default=2, help="torch threads (OpenVINO/ORT use their defaults)")
    p.add_argument("--skip-blocks", action="store_true", help="skip the per-block INT8 decision")
    p.add_argument("--skip-ort-int8", action="store_true", help="skip the ONNX Runtime INT8 (QDQ) export")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/export.md"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("nncf").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    command = "/work/venv/bin/python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])

    source = load_source(args.checkpoint) if args.checkpoint else random_source(args.variant)
    trained = args.checkpoint is not None
    work = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    data = args.data
    if data is None:
        from training.data.generate import generate_dataset

        data = generate_dataset(
            work / "data", containers=args.containers, protocol="closed", seed=11, progress=False
        )["closed"]
    common = dict(
        progress=False,
        bundle=BundleOptions(golden_count=2),
        batch=-1,  # dynamic IRs: this script compiles each for static batch 1 and 6 itself
    )

    def int8(float_blocks: str | None = DEFAULT_FLOAT_BLOCKS) -> Int8Options:
        return Int8Options(
            calibration=CalibrationOptions(data=data, size=args.calib_size),
            # random weights: AP ~0, the guard has nothing to guard
            accuracy=AccuracyOptions(size=args.eval_size, force=not trained),
            float_blocks=float_blocks,
        )

    log.info("exporting FP32 (ONNX + OpenVINO IR)...")
    t0 = time.perf_counter()
    m_fp32 = export_bundle(source, work / "fp32", ExportOptions(target="openvino", **common))
    t_fp32 = time.perf_counter() - t0
    int8_bundles = {}  # label -> (manifest, export seconds)
    for label, policy in INT8_POLICIES.items():
        log.info("exporting %s (float blocks %r)...", label, policy)
        t0 = time.perf_counter()
        m = export_bundle(
            source,
            work / f"int8_{len(int8_bundles)}",
            ExportOptions(target="openvino", int8=int8(policy), **common),
        )
        int8_bundles[label] = (m, work / f"int8_{len(int8_bundles)}", time.perf_counter() - t0)

    ort_int8 = None
    if not args.skip_ort_int8:
        log.info("exporting ONNX Runtime INT8 (QDQ)...")
        t0 = time.perf_counter()
        m = export_bundle(source, work / "ort_int8", ExportOptions(target="onnx", int8=int8(), **common))
        ort_int8 = (m, time.perf_counter() - t0)

    # Every artifact runs on the runtime's own backends (rtvp_edge.backends.open_model: the file, no bundle).
    wrapper = build_wrapper(source.model, "folded", source.text_embeddings)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    ov_files = {  # label -> (IR, compile properties)
        "OpenVINO f32 (hint f32)": (work / "fp32" / "openvino" / "model.xml", f32),
        "OpenVINO default": (work / "fp32" / "openvino" / "model.xml", {}),
        **{label: (folder / "openvino" / "model.xml", {}) for label, (_, folder, _) in int8_bundles.items()},
    }
    models = {
        "PyTorch (fp32)": TorchReference(wrapper),
        "ONNX Runtime (fp32)": open_model("onnxruntime", work / "fp32" / "model.onnx"),
        **{label: open_model("openvino", xml, properties=props) for label, (xml, props) in ov_files.items()},
    }
    precision = {"PyTorch (fp32)": "fp32", "ONNX Runtime (fp32)": "fp32"}
    for label in ov_files:
        hint = models[label].describe()["precision_hint"]
        precision[label] = f"int8 + {hint}" if label in int8_bundles else hint
    if ort_int8 is not None:
        models["ONNX Runtime INT8 (QDQ, SAM float)"] = open_model(
            "onnxruntime", work / "ort_int8" / "model_int8.onnx"
        )
        precision["ONNX Runtime INT8 (QDQ, SAM float)"] = "int8 (u8 act, s8 per-channel w) + fp32"
    runners = {k: m.infer for k, m in models.items()}
    calib = build_calibration_set(data, source.preprocess, min(args.calib_size, 16), progress=False)
    b1 = np.stack([calib.sample(0)[0]])
    b6 = np.stack([calib.sample(i % len(calib))[0] for i in range(6)])
    # OpenVINO compiled for a static batch as well: its CPU plugin is faster on static shapes (INT8 most).
    static1, static6 = {}, {}
    for k, (xml, props) in ov_files.items():
        static1[k] = open_model(
            "openvino", static_ir(xml, 1, work / k.replace(" ", "_")), properties=props
        ).infer
        static6[k] = open_model(
            "openvino", static_ir(xml, 6, work / k.replace(" ", "_")), properties=props
        ).infer
    log.info("timing batch 1 (dynamic, then static)...")
    lat = time_sweeps(runners, b1, args.rounds)
    lat_st = time_sweeps(static1, b1, args.rounds)
    log.info("timing batch 6 (dynamic, then static)...")
    thr = time_sweeps(runners, b6, max(2, args.rounds // 2))
    thr_st = time_sweeps(static6, b6, max(2, args.rounds // 2))
    best = {k: min(lat[k], lat_st.get(k, lat[k])) for k in runners}
    log.info("AP50 on held-out images...")
    eval_set = load_eval_set(data, "val", args.eval_size)
    names = [c.name for c in source.classes]
    ap = {k: evaluate(m, eval_set, source.preprocess, names, desc=k)[0]["AP50"] for k, m in models.items()}
    blocks = [] if args.skip_blocks else block_decision(source, calib, work, args.rounds)

    base = best["OpenVINO f32 (hint f32)"]
    default = best["OpenVINO default"]
    lines = [
        "# Export backends on this CPU",
        "",
        f"Command: `{command}`",
        f"Machine: {cpu_name()}, shared by six engineers (background load; medians of two sweeps).",
        f"Model: {source.model_name}, {'checkpoint ' + str(args.checkpoint) if trained else 'RANDOM weights'}, "
        f"input {source.preprocess.input_size[0]}x{source.preprocess.input_size[1]}, {len(names)} classes "
        f"(vocabulary folded). torch threads {args.threads}; OpenVINO and ONNX Runtime with their default threads.",
        f"Toolchain: {', '.join(f'{k} {v}' for k, v in m_fp32.toolchain.items() if k != 'cpu')}.",
        f"Held-out: {eval_set.describe()}; calibration: {args.calib_size} images of {data} (train split).",
        "",
    ]
    if not trained:
        lines += [
            "**AP50 is meaningless here: random weights (all ~0).** Rerun with `--checkpoint` of a trained "
            "model for the accuracy columns; latencies do not depend on the weights.",
            "",
        ]
    lines += [
        "Latency b=1 in ms (dynamic-batch graph / compiled for static batch 1); speed-ups compare the best of the "
        "two against OpenVINO f32 and OpenVINO's default float mode (each at its best); throughput b=6 "
        "(one part = six views) in images/s (dynamic / static batch 6).",
        "",
        "| backend | executes in | b=1 dynamic | b=1 static | vs OV f32 | vs OV default | b=6 dynamic | b=6 static "
        "| AP50 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    for k in runners:
        st1, st6 = lat_st.get(k), thr_st.get(k)
        lines.append(
            f"| {k} | {precision[k]} | {lat[k] * 1e3:.0f} | {'—' if st1 is None else f'{st1 * 1e3:.0f}'} | {base / best[k]:.2f}x | "
            f"{default / best[k]:.2f}x | {6 / thr[k]:.1f} | {'—' if st6 is None else f'{6 / st6:.1f}'} | "
            f"{ap[k]:.1f} |"
        )
    # The decision, computed from the figures above (best of dynamic/static batch for each artifact).
    float_rows = ["OpenVINO f32 (hint f32)", "OpenVINO default"]
    best_float = min(float_rows, key=lambda k: best[k])
    int8_rows = [k for k in runners if k.startswith("OpenVINO INT8")]
    best_int8 = min(int8_rows, key=lambda k: best[k])
    lines += [
        "",
        f"Decision figures: fastest float mode **{best_float}** ({best[best_float] * 1e3:.0f} ms); fastest INT8 "
        f"policy **{best_int8}** ({best[best_int8] * 1e3:.0f} ms) = {best[best_float] / best[best_int8]:.2f}x the "
        f"best float mode and {base / best[best_int8]:.2f}x OpenVINO f32 (aim: >= 1.0x and >= 2.0x); "
        f"AP50 {ap[best_int8]:.1f} vs FP32 {ap['ONNX Runtime (fp32)']:.1f}"
        + (" (random weights: not meaningful)." if not trained else "."),
    ]
    lines += [
        "",
        "Export time (whole pipeline: ONNX, parity, calibration, NNCF, accuracy guard, golden, bundle):",
        "",
    ]
    lines.append(
        f"- FP32 bundle (ONNX + OpenVINO IR): {t_fp32:.0f} s, stages {m_fp32.source_checkpoint['timings_s']}"
    )
    for label, (m, _, seconds) in int8_bundles.items():
        lines.append(
            f"- {label}: {seconds:.0f} s, of which NNCF PTQ {m.calibration['seconds']:.0f} s on "
            f"{m.calibration['images']} images ({m.calibration['fake_quantize_ops']} FakeQuantize ops); "
            f"kept float: {'; '.join(m.artifact('openvino').kept_float)}"
        )
    if ort_int8 is not None:
        m, seconds = ort_int8
        lines.append(
            f"- ONNX Runtime INT8 (QDQ): {seconds:.0f} s, of which quantization {m.calibration['seconds']:.0f} s "
            f"({m.calibration['quantize_linear_nodes']} QuantizeLinear nodes)"
        )
    if blocks:
        lines += [
            "",
            "## Per-block INT8 decision (block alone, batch 1, OpenVINO)",
            "",
            "| block | f32 (ms) | bf16 default (ms) | INT8 (ms) | INT8 vs bf16 | NNCF time (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, f32, bf16, i8, qt in blocks:
            lines.append(f"| {name} | {f32:.1f} | {bf16:.1f} | {i8:.1f} | {bf16 / i8:.2f}x | {qt:.0f} |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
