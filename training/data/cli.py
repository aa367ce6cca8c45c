"""``rtvp-data``: generate synthetic glass-container data sets, look at them, check real ones.

    rtvp-data generate --out data/glass --containers 200 --protocol both --seed 0
    rtvp-data generate --out data/jars --rig rig.yaml          (a rig file: RigConfig fields, docs/rig.md)
    rtvp-data generate --out data/comp --protocol compositional [--compositional-split split.yaml]
    rtvp-data show --data data/glass --out data/glass/preview
    rtvp-data check --data path/to/mmioc_root

Errors (bad arguments, broken data sets, an existing output) print one line naming the file/field and
exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtvp-data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="render a synthetic data set (MMIOC layout, closed/open protocols)")
    g.add_argument(
        "--out", required=True, type=Path, help="output folder; protocols go to OUT/closed, OUT/open"
    )
    g.add_argument("--containers", type=int, default=200, help="containers to render (6 images each)")
    g.add_argument(
        "--protocol",
        choices=("closed", "open", "both", "compositional"),
        default="both",
        help="both = closed and open; compositional: attribute-composed types with held-out groups (docs/rig.md)",
    )
    g.add_argument(
        "--compositional-split",
        type=Path,
        default=None,
        help="YAML: seen, unseen_combination, unseen_type (lists of type names) for --protocol compositional; "
        "default: the built-in split",
    )
    g.add_argument(
        "--rig",
        type=Path,
        default=None,
        help="rig file (YAML: seed, classes, shapes, tints, ... see docs/rig.md); the flags below override it",
    )
    g.add_argument("--seed", type=int, default=None, help="data set seed (default: the rig file's, else 0)")
    g.add_argument("--format", dest="image_format", choices=("jpg", "png"), default="jpg")
    g.add_argument("--jpeg-quality", type=int, default=95)
    g.add_argument(
        "--val-share", type=float, default=0.2, help="share of containers in val (closed protocol)"
    )
    g.add_argument(
        "--defect-free-share", type=float, default=None, help="share of good containers (default 0.3)"
    )
    g.add_argument(
        "--defect-size-scale", type=float, default=None, help="multiplies defect sizes (default 1.0)"
    )
    g.add_argument("--workers", type=int, default=1, help="rendering processes")
    g.add_argument("--overwrite", action="store_true", help="replace existing protocol folders")
    g.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("show", help="contact sheets and class/box-size plots of a data set")
    s.add_argument("--data", required=True, type=Path, help="a data set root or a folder of protocol roots")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--containers", type=int, default=4, help="contact sheets per split")
    s.add_argument("--split", default=None)

    c = sub.add_parser("check", help="load every split with the reader and print counts (for real data sets)")
    c.add_argument("--data", required=True, type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from training.data.coco import DatasetError

    try:
        if args.command == "generate":
            from rtvp_edge.rig import RigConfig, load_rig_config
            from rtvp_edge.yaml_config import validate_mapping
            from training.data.generate import generate_dataset

            base = load_rig_config(args.rig) if args.rig is not None else RigConfig()
            split_spec = None
            if args.compositional_split is not None:
                from rtvp_edge.rig.compositional import CompositionalSplit
                from rtvp_edge.yaml_config import load_yaml_model

                if args.protocol != "compositional":
                    raise ValueError("--compositional-split needs --protocol compositional")
                split_spec = load_yaml_model(
                    CompositionalSplit, args.compositional_split, what="compositional split file",
                    schema_doc="docs/rig.md",
                )  # fmt: skip
            flags = {
                "seed": args.seed,
                "defect_free_share": args.defect_free_share,
                "defect_size_scale": args.defect_size_scale,
            }
            given = {k: v for k, v in flags.items() if v is not None}
            config = validate_mapping(RigConfig, {**dict(base), **given}, "command line")
            roots = generate_dataset(
                args.out,
                containers=args.containers,
                protocol=args.protocol,
                image_format=args.image_format,
                jpeg_quality=args.jpeg_quality,
                val_share=args.val_share,
                config=config,
                workers=args.workers,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                compositional_split=split_spec,
            )
            _print_counts(roots.values())
        elif args.command == "show":
            from training.data.show import show_dataset

            for p in show_dataset(args.data, args.out, containers=args.containers, split=args.split):
                print(p)
        else:
            from training.data.show import find_roots

            _print_counts(find_roots(args.data))
    except (DatasetError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"rtvp-data {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _print_counts(roots) -> None:
    from training.data.coco import load_coco_split
    from training.data.show import splits_of

    for root in roots:
        for split in splits_of(Path(root)):
            ds = load_coco_split(root, split)
            counts = ", ".join(f"{k}={v}" for k, v in ds.class_counts().items())
            print(f"{root}/{split}: {len(ds.images)} images, {ds.num_boxes} boxes ({counts})")


if __name__ == "__main__":
    sys.exit(main())
