"""Peers side by side on this CPU: YOLOv8-S and YOLO-World-S v2 next to RTVPNet-S and the demo model.

Usage (from the repository root; Ultralytics lives in its own venv that sees the project's, see
benchmarks/results/peers.md for the two commands that make it)::

    /work/venv-bench/bin/python benchmarks/bench_peers.py --work runs/peers --rounds 3 --threads 2 \\
        --out benchmarks/results/peers.md

Stage 1 builds every artifact once in ``--work`` (kept between runs; ``--rebuild`` redoes them), all with
random weights (no download: ``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=0``):

* YOLOv8-S (8 classes) and YOLO-World-S v2 (8 cached classes: random unit text embeddings of CLIP's shape
  (1, 8, 512), what ``set_classes`` leaves, since no CLIP weights can be downloaded here), built by
  Ultralytics from their YAML, exported by Ultralytics to OpenVINO FP32 (dynamic batch), quantized with NNCF
  the way Ultralytics' own ``int8=True`` export does it (MIXED preset, the detect head's box decoding and
  sigmoids kept float);
* RTVPNet-S (``rtvpnet_s``, EfficientNet-Lite0 general encoder at half resolution, as the demo model) at
  640 and at the demo's input (the container crop letterboxed into 512x448), and RTVPNet-tiny with the demo
  model's configuration (``training/configs/glass_demo.yaml``), each saved as a checkpoint and exported by
  ``rtvp-export --int8 --keep-fp32`` (OpenVINO FP32 + INT8; the demo with its own keep-float flags);
* the shipped demo bundle's INT8 IR (trained weights) as it is.

Calibration: a few rendered rig images (``--calib-size``); with random weights the INT8 artifacts are for
speed only. Stage 2 compiles every artifact at batch 1 and batch 6 (one part of six views; the IR is reshaped
to a static batch), 2 threads, one stream, and times them in alternating sweeps (A, B, C, ..., A, B, ...):
each round runs each (artifact, batch) ``--iters`` times. Figures are medians over rounds of the per-round
fastest call, and ratios are taken against YOLO-World-S at the same input, batch and precision, inside this
one run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_flags, cpu_name  # noqa: E402

CLASSES = 8
DEMO_BUNDLE = ROOT / "rtvp_edge" / "demo" / "bundle"


@dataclass
class Artifact:
    """One model file to time: ``name`` (row label), ``precision``, ``xml`` and its (H, W) input."""

    name: str
    precision: str
    xml: Path
    input_hw: tuple[int, int]
    batches: tuple[int, ...] = (1, 6)
    note: str = ""
    times: dict[int, list[float]] = field(default_factory=dict)  # batch -> per-round fastest seconds


# ---------------------------------------------------------------------------------------------- calibration
def calibration_images(work: Path, n: int) -> list[np.ndarray]:
    """``n`` rendered rig views (BGR uint8, camera size), rendered once into ``work/calib``."""
    import cv2

    from training.data.generate import generate_dataset

    root = work / "calib"
    if not (root / "closed" / "Images" / "train").is_dir():
        generate_dataset(root, containers=max(2, -(-n // 5)), protocol="closed", seed=7, progress=False)
    paths = sorted((root / "closed" / "Images" / "train").iterdir())[:n]
    return [cv2.imread(str(p)) for p in paths]


def yolo_input(bgr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Ultralytics' preprocessing: letterbox (grey 114), RGB, [0, 1], (1, 3, H, W) float32."""
    from rtvp_edge.preprocess import letterbox

    img = letterbox(bgr, hw, pad_value=114)[0]
    return np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------- YOLO peers
def build_yolo(
    kind: str, hw: tuple[int, int], work: Path, calib: list[np.ndarray], threads: int
) -> list[Artifact]:
    """Ultralytics build + OpenVINO FP32 export + NNCF INT8 of ``kind`` (``yolov8s`` | ``yolo_world_s``)."""
    import openvino as ov

    folder = work / f"{kind}_{hw[0]}x{hw[1]}"
    fp32, int8 = folder / "fp32.xml", folder / "int8.xml"
    label = {"yolov8s": "YOLOv8-S", "yolo_world_s": "YOLO-World-S v2"}[kind]
    if not fp32.is_file():
        import torch

        os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "ultralytics_cfg"))
        import yaml
        from ultralytics import YOLO  # AGPL-3.0: benchmark-only peer (setup.cfg extra "bench")
        from ultralytics.nn.tasks import yaml_model_load

        torch.manual_seed(0)
        folder.mkdir(parents=True, exist_ok=True)
        names = {i: f"class{i}" for i in range(CLASSES)}
        if kind == "yolov8s":
            # Ultralytics' yolov8s.yaml with 8 classes (random weights); the file name keeps scale "s"
            cfg = yaml_model_load("yolov8s.yaml")
            cfg["nc"] = CLASSES
            cfg_file = folder / "yolov8s.yaml"
            cfg_file.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "yaml_file"}))
            model = YOLO(str(cfg_file))
            model.model.names = names
        else:
            model = YOLO("yolov8s-worldv2.yaml")
            # What set_classes(8 names) leaves, without the CLIP download: (1, 8, 512) unit text embeddings as
            # the cached vocabulary, and the head's class count.
            g = torch.Generator().manual_seed(0)
            model.model.txt_feats = torch.nn.functional.normalize(
                torch.randn(1, CLASSES, 512, generator=g), dim=-1
            )
            model.model.model[-1].nc = CLASSES
            model.model.names = names
        with contextlib.chdir(folder):  # Ultralytics writes its export folder next to the model file / cwd
            out = Path(model.export(format="openvino", imgsz=list(hw), dynamic=True, batch=1, device="cpu"))
            xml = next(out.resolve().glob("*.xml"))
            ov.save_model(ov.Core().read_model(xml), fp32.resolve(), compress_to_fp16=False)
            shutil.rmtree(out.resolve())
    if not int8.is_file():
        quantize_like_ultralytics(fp32, int8, [yolo_input(c, hw) for c in calib])
    return [
        Artifact(label, "FP32", fp32, hw, note="Ultralytics OpenVINO export"),
        Artifact(label, "INT8", int8, hw, note="NNCF PTQ, Ultralytics' int8 settings"),
    ]


def quantize_like_ultralytics(fp32: Path, int8: Path, samples: list[np.ndarray]) -> None:
    """NNCF PTQ as ``ultralytics.utils.export.openvino.torch2openvino(quantize=8, int8_detect=True)``: MIXED
    preset; every Sigmoid and the detect head's last block (box decoding, DFL) kept float."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(fp32)
    ops = model.get_ordered_ops()
    sigmoids = [op.get_friendly_name() for op in ops if op.get_type_name() == "Sigmoid"]
    head = sigmoids[-1].split("/", 1)[0] if sigmoids and "/" in sigmoids[-1] else None
    names = [
        op.get_friendly_name()
        for op in ops
        if op.get_type_name() == "Sigmoid"
        or (head and op.get_friendly_name().startswith((f"{head}/", f"{head}.dfl")))
    ]
    q = nncf.quantize(
        model,
        nncf.Dataset(samples),
        preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=nncf.IgnoredScope(names=names, validate=False),
        subset_size=len(samples),
    )
    ov.save_model(q, int8, compress_to_fp16=False)


# ---------------------------------------------------------------------------------------------- RTVPNet
def build_rtvpnet(
    label: str, model_cfg: dict, hw: tuple[int, int], crop, extra: list[str], work: Path, calib_n: int
) -> list[Artifact]:
    """Random-weight checkpoint of ``model_cfg`` -> ``rtvp-export --int8 --keep-fp32`` (OpenVINO, dynamic batch)."""
    import torch

    from export.cli import main as export_main
    from rtvp_edge.bundle import load_manifest
    from rtvp_edge.preprocess import PreprocessSpec
    from rtvp_edge.vocabulary import GLASS_DEFECTS
    from training import checkpoint as ckpt
    from training.model import ModelConfig, build_model
    from training.model.text_encoder import build_text_encoder

    slug = label.lower().replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    folder = work / f"{slug}_{hw[0]}x{hw[1]}"
    bundle = folder / "bundle"
    if not (bundle / "manifest.json").is_file():
        torch.manual_seed(0)
        cfg = ModelConfig.from_dict({**model_cfg, "img_size": list(hw)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(cfg).eval()
        encoder = build_text_encoder("random:512")
        vocabulary = [{"name": c.name, "prompt": c.prompt} for c in GLASS_DEFECTS]
        emb = encoder.encode([v["prompt"] for v in vocabulary])
        model.set_text_center(torch.as_tensor(emb))
        path = ckpt.save_checkpoint(
            folder / "random.pt",
            model,
            model_config=cfg,
            vocabulary=vocabulary,
            text_encoder="random:512",
            preprocess=PreprocessSpec(hw, crop=crop),
            provenance={"note": "random weights, bench_peers.py"},
            text_embeddings=emb,
        )
        # A plain folder of images: no held-out annotations, so no accuracy guard (--force); random weights
        # have no accuracy to guard, these artifacts are for timing only.
        calib_dir = work / "calib" / "closed" / "Images" / "train"
        argv = [
            "--checkpoint", str(path), "--target", "openvino", "--int8", "--keep-fp32", "--batch", "-1",
            "--calib-data", str(calib_dir), "--calib-size", str(calib_n), "--golden", "1", "--out", str(bundle),
            "--overwrite", "--quiet", "--force", *extra,
        ]  # fmt: skip
        if export_main(argv) != 0:
            raise SystemExit(f"rtvp-export failed for {label}: {' '.join(argv)}")
    manifest = load_manifest(bundle)
    rows = []
    for art in manifest.artifacts:
        if art.backend == "openvino":
            rows.append(
                Artifact(label, str(art.precision).upper(), bundle / art.path, hw, note="rtvp-export")
            )
    return sorted(rows, key=lambda a: a.precision != "FP32")


# ---------------------------------------------------------------------------------------------- timing
def compile_all(arts: list[Artifact], threads: int):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    compiled = []
    for a in arts:
        for b in a.batches:
            model = core.read_model(a.xml)
            model.reshape({model.inputs[0].get_any_name(): [b, 3, *a.input_hw]})
            cm = core.compile_model(model, "CPU", config)
            req = cm.create_infer_request()
            x = np.random.default_rng(0).random((b, 3, *a.input_hw), dtype=np.float32)
            req.infer({0: x})  # warm-up
            compiled.append((a, b, req, x))
            print(f"compiled {a.name} {a.precision} b={b}", flush=True)
    return compiled


def sweep(compiled, rounds: int, iters: int) -> None:
    for r in range(rounds):
        for a, b, req, x in compiled:
            best = float("inf")
            for _ in range(iters):
                t0 = time.perf_counter()
                req.infer({0: x})
                best = min(best, time.perf_counter() - t0)
            a.times.setdefault(b, []).append(best)
        print(f"round {r + 1}/{rounds} done", flush=True)


def ms(a: Artifact, b: int) -> float:
    return statistics.median(a.times[b]) * 1e3


# ---------------------------------------------------------------------------------------------- report
def report(arts: list[Artifact], args, started: str) -> str:
    def ref(a: Artifact, prec: str | None = None) -> Artifact | None:
        for r in arts:
            if (
                r.name == "YOLO-World-S v2"
                and r.input_hw == a.input_hw
                and r.precision == (prec or a.precision)
            ):
                return r
        return None

    lines = [
        "| model | input (HxW) | precision | b=1 ms | b=6 ms per part | b=6 ms per view | b=1 vs YOLO-World-S | "
        "b=6 vs YOLO-World-S | INT8 speed vs FP32 (b=1) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for a in arts:
        r = ref(a)
        fp = next(
            (x for x in arts if x.name == a.name and x.input_hw == a.input_hw and x.precision == "FP32"), None
        )
        b1 = f"{ms(a, 1):.0f}" if 1 in a.times else "-"
        b6 = f"{ms(a, 6):.0f}" if 6 in a.times else "-"
        per_view = f"{ms(a, 6) / 6:.0f}" if 6 in a.times else "-"
        r1 = f"{ms(a, 1) / ms(r, 1):.2f}x" if r and 1 in a.times else "-"
        r6 = f"{ms(a, 6) / ms(r, 6):.2f}x" if r and 6 in a.times else "-"
        sp = f"{ms(fp, 1) / ms(a, 1):.2f}x" if fp and a.precision != "FP32" and 1 in a.times else ""
        name = a.name + (f" ({a.note})" if a.note and "shipped" in a.note else "")
        lines.append(
            f"| {name} | {a.input_hw[0]}x{a.input_hw[1]} | {a.precision} | {b1} | {b6} | {per_view} | {r1} | {r6} | {sp} |"
        )
    best = []
    for name in dict.fromkeys(a.name for a in arts):
        for hw in dict.fromkeys(a.input_hw for a in arts if a.name == name):
            group = [a for a in arts if a.name == name and a.input_hw == hw]
            refs = [a for a in arts if a.name == "YOLO-World-S v2" and a.input_hw == hw]
            if not refs or name == "YOLO-World-S v2":
                continue
            for b in (1, 6):
                mine = [a for a in group if b in a.times]
                theirs = [a for a in refs if b in a.times]
                if mine and theirs:
                    m = min(mine, key=lambda a: ms(a, b))
                    t = min(theirs, key=lambda a: ms(a, b))
                    best.append(
                        f"| {name} | {hw[0]}x{hw[1]} | {b} | {m.precision} {ms(m, b):.0f} | {t.precision} "
                        f"{ms(t, b):.0f} | **{ms(m, b) / ms(t, b):.2f}x** |"
                    )
    import openvino as ov

    cmd = "/work/venv-bench/bin/python benchmarks/bench_peers.py " + " ".join(sys.argv[1:])
    return "\n".join(
        [
            f"Command: `{cmd}`",
            "",
            f"Date: {started} UTC. Machine: {cpu_name()}; SIMD flags: {cpu_flags()}. OpenVINO {ov.__version__}, "
            f"{args.threads} inference threads, one stream, LATENCY hint; load average at the start "
            f"{os.getloadavg()[0]:.1f} (the machine is shared: ratios inside this run are the figures to read).",
            f"{args.rounds} alternating rounds over every (artifact, batch), {args.iters} call(s) per visit; "
            "ms = median over rounds of the fastest call per visit. Ratios: against YOLO-World-S v2 at the same "
            "input, batch and precision.",
            "",
            *lines,
            "",
            "Best artifact against best artifact (the runtime picks the faster one on its CPU):",
            "",
            "| model | input | batch | best (ms) | YOLO-World-S best (ms) | ratio |",
            "|---|---|---:|---|---|---:|",
            *best,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/peers"), help="artifacts folder (kept)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=2, help="calls per visit; the fastest counts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-size", type=int, default=16, help="calibration images for every INT8 artifact")
    ap.add_argument(
        "--models",
        nargs="+",
        default=["yolov8s@640", "yolo_world_s@640", "rtvpnet_s@640", "yolo_world_s@512x448", "rtvpnet_s@512x448",
                 "demo", "demo_bundle"],
        help="what to build and time: yolov8s@HxW, yolo_world_s@HxW, rtvpnet_s@HxW, demo (random weights, "
        "the demo configuration), demo_bundle (the shipped INT8 IR)",
    )  # fmt: skip
    ap.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="LABEL@HxW=PATH",
        help="also time the OpenVINO artifacts of this rtvp-export bundle (repeatable), e.g. an earlier export",
    )
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--rebuild", action="store_true", help="delete --work first")
    ap.add_argument("--out", type=Path, help="markdown file to write the results into (replaces its table)")
    ap.add_argument("--json", type=Path, help="raw times (seconds per round) as JSON")
    args = ap.parse_args(argv)
    for name, v in (("--rounds", args.rounds), ("--iters", args.iters), ("--threads", args.threads)):
        if v < 1:
            ap.error(f"{name} must be >= 1, got {v}")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    if args.rebuild and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    calib = calibration_images(args.work, args.calib_size)
    demo_cfg = {
        "variant": "rtvpnet_tiny",
        "width": 0.25,
        "encoder": "efficientnet_lite0",
        "encoder_scale": 0.5,
    }
    s_cfg = {"variant": "rtvpnet_s", "encoder": "efficientnet_lite0", "encoder_scale": 0.5}
    demo_crop = (100, 208, 600, 784)
    arts: list[Artifact] = []
    for spec in args.models:
        kind, _, size = spec.partition("@")
        hw = tuple(int(v) for v in size.split("x")) if size else (640, 640)
        if len(hw) == 1:
            hw = (hw[0], hw[0])
        if kind in ("yolov8s", "yolo_world_s"):
            arts += build_yolo(kind, hw, args.work, calib, args.threads)
        elif kind == "rtvpnet_s":
            crop = demo_crop if hw == (512, 448) else None
            arts += build_rtvpnet("RTVPNet-S", s_cfg, hw, crop, [], args.work, args.calib_size)
        elif kind == "demo":
            flags = ["--half", "--keep-float", "head", "--keep-float", "projection"]
            arts += build_rtvpnet("RTVPNet-tiny (demo config)", demo_cfg, (512, 448), demo_crop, flags, args.work,
                                  args.calib_size)  # fmt: skip
        elif kind == "demo_bundle":
            m = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
            art = m["artifacts"][0]
            hw = tuple(m["preprocess"]["input_size"])
            arts.append(Artifact("RTVPNet-tiny, demo bundle", art["precision"].upper(), DEMO_BUNDLE / art["path"],
                                 hw, batches=(6,), note="shipped, trained weights, static batch 6"))  # fmt: skip
        else:
            ap.error(f"--models: unknown {spec!r}")
    for spec in args.bundle:
        label_hw, sep, path = spec.partition("=")
        label, _, size = label_hw.rpartition("@")
        if not sep or not label or "x" not in size:
            ap.error(f"--bundle expects LABEL@HxW=PATH, got {spec!r}")
        hw = tuple(int(v) for v in size.split("x"))
        m = json.loads((Path(path) / "manifest.json").read_text())
        for art in m["artifacts"]:
            if art["backend"] == "openvino":
                arts.append(
                    Artifact(
                        label, art["precision"].upper(), Path(path) / art["path"], hw, note="rtvp-export"
                    )
                )
    if args.build_only:
        return 0
    compiled = compile_all(arts, args.threads)
    sweep(compiled, args.rounds, args.iters)
    text = report(arts, args, started)
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {"name": a.name, "precision": a.precision, "input": a.input_hw, "times_s": a.times}
                    for a in arts
                ],
                indent=1,
            )  # fmt: skip
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        marker = "<!-- bench_peers table -->"
        old = args.out.read_text() if args.out.is_file() else f"# Peers side by side\n\n{marker}\n{marker}\n"
        head, _, rest = old.partition(marker)
        _, _, tail = rest.partition(marker)
        args.out.write_text(f"{head}{marker}\n{text}\n{marker}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
