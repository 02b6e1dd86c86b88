"""Write a MONAI datalist (seeded, stratified train/val/test split) and registry entries for a folder of images.

Examples::

    # BUSI as downloaded from Kaggle: benign/ malignant/ normal/ with "<name>_mask[_k].png" beside each image
    python scripts/make_datalist.py Dataset_BUSI_with_GT --out my_data/busi.json --registry my_data/datasets.yaml \\
        --dataset BUSI --task segmentation classification --organ breast --object-type tumor \\
        --classes benign malignant

    # a new organ (its prompt weights start as breast's when a model adapts), groups from a CSV, unlabelled images
    python scripts/make_datalist.py nerve_data/ --out my_data/nerve.json --registry my_data/datasets.yaml \\
        --dataset Nerve --task segmentation --organ nerve --new-organ --init-from breast --object-type organ \\
        --groups-csv nerve_data/metadata.csv --unlabelled nerve_data/unlabelled

    # images/ + masks/ with matching stems, patients "p012_3.png" kept in one split
    python scripts/make_datalist.py thyroid/ --out my_data/thyroid.json --registry my_data/datasets.yaml \\
        --dataset Thyroid --task segmentation --organ thyroid --object-type organ --group-regex "^(p\\d+)_"

Train with it: ``load_samples(registry, "train", datalist="my_data/busi.json")`` (configs:
``--registry_file my_data/datasets.yaml --datalist my_data/busi.json``).

The command line of ``scripts/make_datalist.py``; scanning, splitting and writing are
``bundle.data.scan.make_datalist``'s.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bundle.data.scan import DatalistSpec, make_datalist
from bundle.data.unlabelled import unlabelled_samples

__all__ = ["main", "parse_seg_classes"]


def parse_seg_classes(items: Sequence[str] | None) -> dict[str, int] | None:
    """``["background:0", "tumor:255"]`` -> ``{"background": 0, "tumor": 255}``; None without items."""
    if not items:
        return None
    classes = {}
    for item in items:
        name, _, value = item.rpartition(":")
        if not name or not value.isdigit():
            raise SystemExit(f"--seg-classes items must be name:value, got '{item}'")
        classes[name] = int(value)
    return classes


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    """Parse ``argv`` (the command line by default), write the datalist (and registry); images per split."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="folder of images (and masks)")
    parser.add_argument("--out", type=Path, required=True, help="datalist JSON to write")
    parser.add_argument("--dataset", required=True, help="dataset name (the registry's 'name')")
    parser.add_argument("--task", nargs="+", required=True, choices=["segmentation", "classification"])
    parser.add_argument("--organ", required=True, help="position prompt name, e.g. breast")
    parser.add_argument("--object-type", required=True, help="tumor or organ")
    parser.add_argument("--registry", type=Path, help="registry YAML to add the dataset to (created if absent)")
    parser.add_argument("--classes", nargs="+", default=(), help="class folders to keep, in class-index order")
    parser.add_argument("--seg-classes", nargs="+", help="segmentation classes as name:mask_value (default: binary)")
    parser.add_argument("--fractions", nargs=3, type=float, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=0)
    grouping = parser.add_mutually_exclusive_group()
    grouping.add_argument("--group-regex", help="regex on the file stem; its first group keeps images in one split")
    grouping.add_argument("--groups-csv", type=Path, help="CSV: file stem in the first column, a 'group' column")
    parser.add_argument("--new-organ", action="store_true", help="the organ is not an official one: declare it")
    parser.add_argument("--init-from", help="with --new-organ: the known organ whose prompt weights it starts from")
    parser.add_argument("--unlabelled", type=Path, help="folder of unlabelled images of the same data, to report")
    args = parser.parse_args(argv)
    if args.init_from and not args.new_organ:
        parser.error("--init-from needs --new-organ")
    spec = DatalistSpec(
        dataset=args.dataset,
        tasks=tuple(args.task),
        organ=args.organ,
        object_type=args.object_type,
        classes=tuple(args.classes),
        seg_classes=parse_seg_classes(args.seg_classes),
        new_organ=args.new_organ,
        init_from=args.init_from,
    )
    report = make_datalist(
        args.root, args.out, spec, args.registry, args.fractions, args.seed, args.group_regex, args.groups_csv
    )
    print(f"wrote {args.out}" + (f"; declared in {args.registry}" if args.registry else ""))
    print(report)
    if args.unlabelled is not None:
        pool = unlabelled_samples([{"dir": args.unlabelled, "organ": args.organ, "object_type": args.object_type}])
        print(
            f"{len(pool)} unlabelled images in {args.unlabelled}; train with them (consistency) by adding "
            f"--unlabelled_dirs \"[{{'dir': '{args.unlabelled}', 'organ': '{args.organ}', "
            f"'object_type': '{args.object_type}'}}]\" --consistency_weight 0.1"
        )
    return report.counts
