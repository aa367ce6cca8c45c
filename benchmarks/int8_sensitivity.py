"""Which block of the network costs AP when quantized to INT8 (NNCF PTQ, OpenVINO), one block at a time.

For each top-level block of the model that has nodes in the exported graph, the IR is quantized with only
that block in INT8 (``--mode only``: every other block kept float) or with only that block kept float
(``--mode keep``), and its AP50 on held-out images is compared with the FP32 IR on the same images. The
graph tail (scores, sigmoid, box decoding) stays float in every row, as export does it.

    python benchmarks/int8_sensitivity.py --checkpoint runs/glass_demo_c/best.pt \
        --eval-data data/glass1x/closed --eval-size 150 --calib-size 100

Prints a Markdown table (append it to benchmarks/results/export.md with the command, CPU and date).
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--eval-data", required=True, help="data set root with annotations/val.json")
    ap.add_argument("--eval-size", type=int, default=150)
    ap.add_argument("--calib-size", type=int, default=100)
    ap.add_argument("--mode", choices=("only", "keep"), default="only")
    ap.add_argument("--blocks", nargs="*", default=None, help="blocks to test (default: all with nodes)")
    ap.add_argument("--extra", action="append", default=[], help="extra configuration: comma list of blocks "
                    "kept float, everything else INT8 (repeatable)")  # fmt: skip
    ap.add_argument("--extra-only", action="store_true", help="run only the --extra configurations")
    args = ap.parse_args(argv)

    import onnx
    import torch

    from benchmarks.machine import cpu_name
    from export import openvino_backend as ovb
    from export.accuracy import evaluate, load_eval_set
    from export.calibration import build_calibration_set
    from export.int8_policy import block_pattern, keep_float_policy
    from export.onnx_export import export_onnx
    from export.source import load_source
    from export.wrapper import build_wrapper
    from rtvp_edge.backends import open_model

    source = load_source(args.checkpoint)
    spec = source.preprocess
    names = [c.name for c in source.classes]
    eval_set = load_eval_set(args.eval_data, "val", args.eval_size)
    calib = build_calibration_set(args.eval_data, spec, args.calib_size, progress=False)
    work = Path(tempfile.mkdtemp(prefix="int8-sens-"))
    emb = source.text_embeddings
    wrapper = build_wrapper(source.model, "folded", emb)
    onnx_path = export_onnx(wrapper, work / "model.onnx", "folded", spec.input_size, tuple(emb.shape))
    graph = onnx.load(str(onnx_path), load_external_data=False)
    children = [n for n, _ in source.model.named_children()]
    node_names = [n.name for n in graph.graph.node]
    blocks = [b for b in children if any(re.match(block_pattern(b), n) for n in node_names)]
    if args.blocks:
        blocks = [b for b in blocks if b in args.blocks]

    def ap50(xml: Path, precision: str) -> float:
        backend = open_model("openvino", xml, properties={"INFERENCE_PRECISION_HINT": "f32"})
        return evaluate(backend, eval_set, spec, names, progress=False)[0]["AP50"]

    fp32_xml = ovb.convert_ir(onnx_path, work / "fp32" / "model.xml", half=False)
    base = ap50(fp32_xml, "fp32")
    rows = [("FP32 IR", "-", base, 0.0, 0)]

    def run(label: str, float_blocks: list[str]) -> None:
        keep = keep_float_policy(graph, children, None, float_blocks)
        t0 = time.perf_counter()
        try:
            xml, info = ovb.quantize_int8(onnx_path, work / label / "model.xml", calib, keep)
        except Exception as e:  # noqa: BLE001 - a row that failed is reported, the others still run
            rows.append((label, ",".join(float_blocks) or "-", float("nan"), time.perf_counter() - t0, 0))
            print(f"{label}: {e}", file=sys.stderr)
            return
        value = ap50(xml, "int8")
        rows.append((label, ",".join(float_blocks) or "-", value, time.perf_counter() - t0,
                     info["fake_quantize_ops"]))  # fmt: skip
        print(f"{label}: AP50 {value:.1f} (FP32 {base:.1f})", file=sys.stderr, flush=True)

    if not args.extra_only:
        run("all INT8", [])
    for b in [] if args.extra_only else blocks:
        if args.mode == "only":
            run(f"only {b} INT8", [x for x in blocks if x != b])
        else:
            run(f"{b} float", [b])
    for extra in args.extra:
        kept = [x for x in extra.split(",") if x]
        run(f"float: {extra}", kept)

    print(
        f"\n{datetime.date.today()} · {cpu_name()} · torch {torch.__version__} · checkpoint {args.checkpoint}"
    )
    print(
        f"held-out {len(eval_set.images)} images of {args.eval_data}, calibration {len(calib)} train images\n"
    )
    print("| configuration | kept float | AP50 | Δ vs FP32 | quantizers | s |")
    print("|---|---|---|---|---|---|")
    for label, kept, value, secs, fq in rows:
        print(f"| {label} | {kept} | {value:.1f} | {value - base:+.1f} | {fq} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
