"""The detector on the simulated glass line, scored against the rig's ground truth (the detector issue's
targets): clear defects located in at least one view, found with their right class, reported defects that
lie on a true defect, part verdicts right. The same matching as ``tests/test_demo_line.py``
(``rtvp_edge.rig.scoring``, IoU 0.3), over as many parts and seeds as you ask, without a broker.

    python benchmarks/line_accuracy.py --bundle rtvp_edge/demo/bundle --parts 60 --seed 101 \
        --out benchmarks/results/line_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402

CAMERAS = ["L1", "L2", "L3", "R1", "R2", "R3"]


def line_file(
    folder: Path, bundle: Path, parts: int, seed: int, scale: float, backend: str, score: float | None = None
) -> Path:
    cams = "\n".join(
        f"  - {{id: {c}, source: sim, bank: {'left' if v < 3 else 'right'}, view: {v}, "
        f"resolution: {{width: 700, height: 820}}, overflow: block}}"
        for v, c in enumerate(CAMERAS)
    )
    p = folder / "line.yaml"
    p.write_text(
        f"""\
line: {{site: bench, line: glass-1, station: rig-1}}
cameras:
{cams}
sim: {{seed: {seed}, line_rate_hz: 4, n_containers: {parts}, realtime: false, defect_size_scale: {scale}}}
assembly: {{views_per_part: 6, timeout_s: 30}}
model: {{bundle: {bundle.resolve()}, backend: {backend}, threads: 2}}
mqtt: {{broker: external, host: 127.0.0.1, port: 1, outbox: {{path: {folder / "outbox.sqlite"}}}}}
evidence: {{dir: {folder / "evidence"}}}
"""
        + ("" if score is None else f"detection: {{score_threshold: {score}}}\n")
    )
    return p


def run_line(
    bundle: Path, parts: int, seed: int, scale: float, backend: str, score: float | None = None
) -> dict:
    from rtvp_edge.config import load_line_config
    from rtvp_edge.pipeline import build_pipeline
    from rtvp_edge.rig.scoring import LineScore, score_part

    verdicts = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_line_config(line_file(Path(tmp), bundle, parts, seed, scale, backend, score))
        p = build_pipeline(cfg, use_mqtt=False, sinks=[lambda v: verdicts.__setitem__(v.part_id, v)])
        t0 = time.perf_counter()
        try:
            p.run()
        finally:
            p.close(flush_timeout=1)
        wall = time.perf_counter() - t0
        score = LineScore()
        incomplete = 0
        for i in range(parts):
            v = verdicts.get(f"C{i:06d}")
            if v is None or v.verdict == "INCOMPLETE":
                incomplete += 1
                continue
            defects = [(r.view_index, d.class_name, d.box) for r in v.views for d in r.detections]
            score_part(score, p.rig.config, i, v.verdict, defects)
    return {
        "seed": seed,
        "defect_size_scale": scale,
        "incomplete": incomplete,
        "wall_s": wall,
        **score.as_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path("rtvp_edge/demo/bundle"))
    ap.add_argument("--parts", type=int, default=60)
    ap.add_argument("--seed", type=int, nargs="+", default=[101])
    ap.add_argument(
        "--scale", type=float, default=1.0, help="sim.defect_size_scale (1.0: the rig's natural size)"
    )
    ap.add_argument("--backend", default="openvino")
    ap.add_argument(
        "--score-threshold",
        type=float,
        nargs="+",
        default=[None],
        help="one score threshold for every class (the line file's detection.score_threshold); several: a "
        "sweep, each on every seed; default: the bundle's (per-class when it records them)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    for threshold in args.score_threshold:
        for seed in args.seed:
            r = run_line(args.bundle, args.parts, seed, args.scale, args.backend, threshold)
            r["score_threshold"] = "bundle" if threshold is None else threshold
            rows.append(r)
            print(json.dumps(r), flush=True)
    report = {
        "command": "python " + " ".join(sys.argv),
        "cpu": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "bundle": str(args.bundle),
        "score_threshold": [("bundle" if t is None else t) for t in args.score_threshold],
        "rows": rows,
    }
    print(
        "\n| score threshold | seed | parts | located | right class | on a true defect | verdicts right | INCOMPLETE |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['score_threshold']} | {r['seed']} | {r['parts']} | {r['location_recall']:.2f} | {r['class_recall']:.2f} | "
            f"{r['precision']:.2f} | {r['part_accuracy']:.2f} | {r['incomplete']} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
