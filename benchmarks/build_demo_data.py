"""Convert the shared real ultrasound images (../shared/data) into the repo's demo data, data/demo/.

Output (M²-US layout, official README) plus a registry and an equivalent MONAI datalist::

    data/demo/datasets.yaml                       registry: prompts and classes of each dataset
    data/demo/datalist.json                       the same splits as a MONAI datalist
    data/demo/segmentation/{BUSI,Fetal_HC,TG3K}/{imgs,masks,config.yaml,train.txt,val.txt,test.txt}
    data/demo/classification/BUSI/{0,1,config.yaml,train.txt,val.txt,test.txt}

Images are downscaled so the shorter side is at most ``--max-short-side`` (Lanczos; masks
nearest) and written as 8-bit grayscale PNG. Splits are seeded (``--seed``), ~70/10/20 per
dataset: BUSI stratified by class (the same split for its segmentation and classification
entries), HC18 kept together by numeric id prefix (same pregnancy), TG3K kept together by
frame geometry (the letterbox padding of its 256 x 256 frames identifies the source video size,
and neighbouring frames of one video are near-identical). BUSI *normal* images are left out:
the official code drops them too (2-class BUSI), and they come from another source, resized
to 256 x 256 without keeping the aspect ratio, which a classifier could learn as a shortcut.

Run: ``python -m benchmarks.build_demo_data [--shared ../shared/data] [--out data/demo]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmarks import BUNDLE_ROOT, DEMO_DATA
from bundle.data import SPLITS, split_ids, write_datalist

BUSI_CLASSES = ("benign", "malignant")


@dataclass(frozen=True)
class SegSource:
    """One shared segmentation dataset and how it becomes an M²-US dataset."""

    folder: str  # folder under ../shared/data
    name: str  # M²-US dataset name (the official one)
    organ: str
    object_type: str
    class_name: str  # name of mask value 255


SOURCES = (
    SegSource("busi", "BUSI", "breast", "tumor", "tumor"),
    SegSource("hc18", "Fetal_HC", "head", "organ", "head"),
    SegSource("tg3k", "TG3K", "thyroid", "organ", "thyroid"),
)


def check_manifest(shared: Path) -> None:
    """Fail unless every file listed in shared/MANIFEST.md5 has its recorded md5."""
    for line in (shared / "MANIFEST.md5").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        if hashlib.md5((shared / name).read_bytes()).hexdigest() != digest:
            raise SystemExit(f"{shared / name}: md5 differs from MANIFEST.md5; the shared data changed")


def downscale(image: Image.Image, max_short_side: int, resample: Image.Resampling) -> Image.Image:
    """``image`` with its shorter side at most ``max_short_side``, aspect ratio kept."""
    width, height = image.size
    scale = max_short_side / min(width, height)
    if scale >= 1:
        return image
    return image.resize((round(width * scale), round(height * scale)), resample)


def letterbox_top(path: Path) -> int:
    """Rows of black padding above a TG3K frame's content: its source video's frame geometry."""
    rows = np.asarray(Image.open(path)).max(axis=1)
    return int(np.argmax(rows > 0))


def split_groups(source: SegSource, ids: list[str], shared: Path) -> dict[str, str] | None:
    """Ids that must share a split, as id -> group key (None: every id alone)."""
    if source.folder == "hc18":
        return {i: re.match(r"hc18_(\d+)", i).group(1) for i in ids}
    if source.folder == "tg3k":
        return {i: letterbox_top(shared / "tg3k" / "images" / f"{i}.png") for i in ids}
    return None


def write_dataset(
    source: SegSource, ids: list[str], split: dict[str, list[str]], shared: Path, out: Path, max_short_side: int
) -> None:
    """Write one segmentation dataset (imgs, masks, config.yaml, list files)."""
    root = out / "segmentation" / source.name
    for sub in ("imgs", "masks"):
        (root / sub).mkdir(parents=True)
    for item in ids:
        image = Image.open(shared / source.folder / "images" / f"{item}.png").convert("L")
        mask = Image.open(shared / source.folder / "masks" / f"{item}.png").convert("L")
        downscale(image, max_short_side, Image.Resampling.LANCZOS).save(root / "imgs" / f"{item}.png", optimize=True)
        downscale(mask, max_short_side, Image.Resampling.NEAREST).save(root / "masks" / f"{item}.png", optimize=True)
    (root / "config.yaml").write_text(f"0:background:0\n1:{source.class_name}:255\n")
    for name, members in split.items():
        (root / f"{name}.txt").write_text("".join(f"{item}.png\n" for item in members))


def write_busi_classification(classes: dict[str, str], split: dict[str, list[str]], out: Path) -> None:
    """BUSI classification: the segmentation images copied into class folders 0 (benign) / 1 (malignant)."""
    root = out / "classification" / "BUSI"
    for index, name in enumerate(BUSI_CLASSES):
        (root / str(index)).mkdir(parents=True)
    for item, name in classes.items():
        shutil.copyfile(
            out / "segmentation" / "BUSI" / "imgs" / f"{item}.png",
            root / str(BUSI_CLASSES.index(name)) / f"{item}.png",
        )
    (root / "config.yaml").write_text("".join(f"{i}:{name}\n" for i, name in enumerate(BUSI_CLASSES)))
    for name, members in split.items():
        lines = [f"{BUSI_CLASSES.index(classes[item])}/{item}.png\n" for item in members]
        (root / f"{name}.txt").write_text("".join(lines))


def registry_entries() -> list[dict]:
    """The registry's dataset declarations (classes come from each dataset's config.yaml)."""
    entries = [
        {"name": s.name, "task": "segmentation", "organ": s.organ, "object_type": s.object_type,
         "root": f"segmentation/{s.name}"}
        for s in SOURCES
    ]
    entries.append(
        {"name": "BUSI", "task": "classification", "organ": "breast", "object_type": "tumor",
         "root": "classification/BUSI", "mask_dir": "segmentation/BUSI/masks"}
    )
    return entries


def datalist_entries(splits: dict[str, dict[str, list[str]]], busi_classes: dict[str, str]) -> dict[str, list[dict]]:
    """The same splits as datalist entries, paths relative to data/demo/."""
    entries: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for source in SOURCES:
        for name in SPLITS:
            for item in splits[source.name][name]:
                entries[name].append({
                    "image": f"segmentation/{source.name}/imgs/{item}.png",
                    "label": f"segmentation/{source.name}/masks/{item}.png",
                    "dataset": source.name, "task": "segmentation",
                })
    for name in SPLITS:
        for item in splits["BUSI"][name]:
            entries[name].append({
                "image": f"classification/BUSI/{BUSI_CLASSES.index(busi_classes[item])}/{item}.png",
                "cls_label": busi_classes[item],
                "mask": f"segmentation/BUSI/masks/{item}.png",
                "dataset": "BUSI", "task": "classification",
            })
    return entries


def write_provenance(shared: Path, out: Path, ids: set[str]) -> None:
    """The shared provenance rows (source repository, commit, paths) of the images used."""
    with open(shared / "provenance.csv", newline="") as handle:
        rows = [row for row in csv.reader(handle)]
    with open(out / "provenance.csv", "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([rows[0]] + [row for row in rows[1:] if row[0] in ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=BUNDLE_ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=DEMO_DATA)
    parser.add_argument("--max-short-side", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    check_manifest(args.shared)
    for sub in ("segmentation", "classification", "datasets.yaml", "datalist.json", "provenance.csv"):
        target = args.out / sub
        if target.is_dir():
            shutil.rmtree(target)
        target.unlink(missing_ok=True)
    with open(args.shared / "busi" / "labels.csv") as handle:
        busi_classes = {row["id"]: row["class"] for row in csv.DictReader(handle) if row["class"] in BUSI_CLASSES}
    splits: dict[str, dict[str, list[str]]] = {}
    for source in SOURCES:
        ids = sorted(p.stem for p in (args.shared / source.folder / "images").glob("*.png"))
        strata = {i: busi_classes[i] for i in ids} if source.folder == "busi" else None
        groups = split_groups(source, ids, args.shared)
        splits[source.name] = split_ids(ids, seed=args.seed, strata=strata, groups=groups)
        write_dataset(source, ids, splits[source.name], args.shared, args.out, args.max_short_side)
    write_busi_classification(busi_classes, splits["BUSI"], args.out)
    header = "# PerceptGuide demo datasets (written by python -m benchmarks.build_demo_data); paths relative to this file.\n"
    registry = {"extra_organs": [], "datasets": registry_entries()}
    (args.out / "datasets.yaml").write_text(header + yaml.safe_dump(registry, sort_keys=False))
    write_datalist(args.out / "datalist.json", datalist_entries(splits, busi_classes))
    write_provenance(args.shared, args.out, {i for split in splits.values() for ids in split.values() for i in ids})
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    for name, split in splits.items():
        print(name, {k: len(v) for k, v in split.items()})
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
