"""A defect type enrolled from a few example boxes against the same type named by its text prompt.

One class is left out of an input-mode export of the checkpoint; ``rtvp_edge.enroll`` adds it back from
``--shots`` boxes of training images (seeded choice, one box per image); its AP50 on the val split
(pycocotools, this class only) is compared with its AP50 when the full text vocabulary is fed to the same
artifact. The model was trained on every class (closed protocol), so this measures how well a prototype of
the model's region embeddings stands in for a prompt, not transfer to a never-seen type.

    python benchmarks/enrol_accuracy.py --checkpoint runs/glass_demo_c/best.pt --data data/glass1x/closed \
        --cls stone scratch --shots 5 --eval-size 300

Prints a Markdown table (with the command, CPU and date) for benchmarks/results/train.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def examples_file(data: Path, cls: str, shots: int, seed: int, out: Path) -> Path:
    """``shots`` boxes of ``cls`` on distinct training images (clear defects), as the enrol list format."""
    coco = json.loads((data / "annotations" / "train.json").read_text())
    cat = next(c["id"] for c in coco["categories"] if c["name"] == cls)
    images = {i["id"]: i for i in coco["images"]}
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        if a["category_id"] == cat and a.get("clear", True):
            by_image.setdefault(a["image_id"], []).append(a)
    chosen = random.Random(seed).sample(sorted(by_image), shots)
    rows = []
    for image_id in chosen:
        x, y, w, h = by_image[image_id][0]["bbox"]
        rows.append(
            {
                "image": str(data / "Images" / "train" / images[image_id]["file_name"]),
                "box": [x, y, x + w, y + h],
            }
        )
    out.write_text(json.dumps(rows, indent=1))
    return out


def class_ap50(backend, embeddings, eval_set, spec, names: list[str], cls: str) -> float:
    from export.accuracy import coco_result, predict

    dets = predict(backend, eval_set, spec, names, embeddings, progress=False)
    only = [[d for d in per_image if d.class_name == cls] for per_image in dets]
    return coco_result(eval_set, only, [cls])[0]["AP50"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", type=Path, required=True, help="closed data set root (train + val annotations)")
    ap.add_argument("--cls", nargs="+", required=True, help="classes to leave out and enrol, one at a time")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--eval-size", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.data = args.data.resolve()  # the examples file names absolute image paths

    from benchmarks.machine import cpu_name
    from export.accuracy import load_eval_set
    from export.options import BundleOptions, ExportOptions
    from export.pipeline import export_bundle
    from export.source import load_source
    from rtvp_edge import enroll
    from rtvp_edge.backends import load_backend, load_embeddings
    from rtvp_edge.bundle import load_manifest

    source = load_source(args.checkpoint)
    spec = source.preprocess
    eval_set = load_eval_set(args.data, "val", args.eval_size)
    text = source.text_embeddings.numpy()
    all_names = [c.name for c in source.classes]
    work = Path(tempfile.mkdtemp(prefix="enrol-"))
    rows = []
    for cls in args.cls:
        keep = [c for c in source.classes if c.name != cls]
        out = work / f"without-{cls.replace(' ', '_')}"
        bundle = BundleOptions(vocab_mode="input", golden_count=1, score_threshold=0.1)
        m = export_bundle(source, out, ExportOptions(target="openvino", bundle=bundle, progress=False), keep)
        backend = load_backend("openvino", out, m)  # the bundle's IR; the vocabulary is a graph input
        ref = class_ap50(backend, text, eval_set, spec, all_names, cls)
        ex = examples_file(args.data, cls, args.shots, args.seed, work / f"{cls}.json")
        result = enroll(out, cls, ex)
        m = load_manifest(out)
        emb = load_embeddings(out, m)
        names = [c.name for c in m.vocabulary.classes]
        got = class_ap50(backend, emb, eval_set, spec, names, cls)
        rows.append((cls, ref, got, getattr(result, "threshold", None)))
        print(f"{cls}: text AP50 {ref:.1f}, enrolled from {args.shots} boxes {got:.1f}", file=sys.stderr)

    print(
        f"\n{datetime.date.today()} · {cpu_name()} · checkpoint {args.checkpoint} · `python {' '.join(sys.argv)}`"
    )
    print(
        f"val: {len(eval_set.images)} images of {args.data}; {args.shots} example boxes per class (seed {args.seed})\n"
    )
    print("| class | AP50 from its text prompt | AP50 enrolled from boxes | ratio |")
    print("|---|---|---|---|")
    for cls, ref, got, _ in rows:
        ratio = got / ref if ref > 0 else float("nan")
        print(f"| {cls} | {ref:.1f} | {got:.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
