"""Build the release archive of the bundle: ``dist/<name>_v<version>.zip``.

The archive holds one top-level folder ``<name>/`` with what a bundle user needs (configs/,
docs/, the ``bundle`` package, the MONAI Label app in apps/, scripts/, LICENSE, README,
pyproject.toml, large_files.yml) plus ``SHA256SUMS``, the sha256 of every other member, which
``scripts/verify_bundle.py`` checks on a downloaded bundle. It ships the product, not the lab:
``benchmarks/`` and ``tests/`` are not packed, nor the folders a MONAI Label server writes into
its app. Weights are never packed: they are large files, listed in ``large_files.yml`` (MONAI's
format) and fetched by ``python -m monai.bundle download_large_files``.

Two builds from the same tree are byte-identical: entries sorted, timestamps, permissions and
compression fixed (deflate output can only change with the zlib version).

Usage (from the repo root)::

    python scripts/pack_bundle.py                          # archive only
    python scripts/pack_bundle.py --weights models/pretrained.pt \\
        --base-url https://github.com/<owner>/<repo>/releases/download/v0.1.0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import yaml

from bundle.hashing import file_digest

PACKED_DIRS = ("apps", "bundle", "configs", "docs", "scripts")
PACKED_FILES = ("LICENSE", "README.md", "pyproject.toml", "large_files.yml")
REQUIRED = ("LICENSE", "configs/metadata.json", "bundle/__init__.py")
CHECKSUM_FILE = "SHA256SUMS"
LARGE_FILES = "large_files.yml"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold
ZIP_MODE = 0o100644  # regular file, rw-r--r--
# what `monailabel start_server` creates inside an app folder apps/<app>/ (logs/app.log among them)
MONAI_LABEL_FOLDERS = ("model", "logs", "bin")


class PackError(ValueError):
    """A tree that cannot be packed; the message names the file or key."""


def read_name_version(root: Path) -> tuple[str, str]:
    """Bundle name and version from ``configs/metadata.json``."""
    meta_file = root / "configs" / "metadata.json"
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PackError(f"cannot read {meta_file}: {error}") from error
    values = []
    for key in ("name", "version"):
        value = metadata.get(key)
        if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
            raise PackError(f"{meta_file}: key '{key}' must be a non-empty file-name-safe string, got {value!r}")
        values.append(value)
    if "." in values[0]:
        # MONAI's download names the extracted folder by the zip name up to its first dot
        raise PackError(f"{meta_file}: key 'name' must not contain '.', got {values[0]!r}")
    return values[0], values[1]


def _is_skipped(relative: PurePosixPath) -> bool:
    """Caches, hidden files and what a MONAI Label server wrote into an app are never part of a release."""
    parts = relative.parts
    if parts[0] == "apps" and len(parts) > 3 and parts[2] in MONAI_LABEL_FOLDERS:
        return True
    return any(part.startswith(".") or part == "__pycache__" for part in parts) or relative.suffix == ".pyc"


def collect_members(root: Path, exclude: Iterable[str] = ()) -> list[str]:
    """Sorted posix paths (relative to ``root``) of every file to pack, without the weights in ``exclude``."""
    for required in REQUIRED:
        if not (root / required).is_file():
            raise PackError(f"cannot pack {root}: required file {required} is missing")
    excluded = {PurePosixPath(path).as_posix() for path in exclude}
    candidates = [root / name for name in PACKED_FILES if (root / name).exists()]
    for directory in PACKED_DIRS:
        if (root / directory).is_dir():
            candidates.extend(path for path in (root / directory).rglob("*") if not path.is_dir())
    members = []
    for path in candidates:
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if _is_skipped(relative) or relative.as_posix() in excluded:
            continue
        if path.is_symlink() or not path.is_file():
            raise PackError(f"cannot pack {path}: only regular files are allowed (symlinks are refused by MONAI)")
        members.append(relative.as_posix())
    return sorted(members)


def read_large_files(root: Path) -> list[dict]:
    """Entries of ``large_files.yml`` (empty if the file is absent), each checked for MONAI's keys."""
    path = root / LARGE_FILES
    if not path.exists():
        return []
    content = yaml.safe_load(path.read_text()) or {}
    entries = content.get("large_files") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise PackError(f"{path}: top-level key 'large_files' must be a list")
    for index, entry in enumerate(entries):
        missing = [key for key in ("path", "url", "hash_val", "hash_type") if not (isinstance(entry, dict) and entry.get(key))]
        if missing:
            raise PackError(f"{path}: entry {index} lacks {missing}")
    return entries


def write_large_files(root: Path, weights: Sequence[str], base_url: str) -> list[dict]:
    """Write ``large_files.yml`` listing ``weights`` (paths relative to ``root``) at ``base_url/<file name>``."""
    entries = []
    names = set()
    for weight in weights:
        relative = PurePosixPath(Path(weight).as_posix())
        path = root / relative
        if relative.is_absolute() or ".." in relative.parts:
            raise PackError(f"--weights {weight}: give a path inside the bundle, relative to {root}")
        if not path.is_file():
            raise PackError(f"--weights {weight}: no such file {path}")
        if relative.name in names:
            raise PackError(f"--weights {weight}: two weight files named {relative.name} would share one URL")
        names.add(relative.name)
        url = f"{base_url.rstrip('/')}/{relative.name}"
        entries.append({"path": relative.as_posix(), "url": url, "hash_val": file_digest(path), "hash_type": "sha256"})
    text = "# Written by scripts/pack_bundle.py; fetched by `python -m monai.bundle download_large_files`.\n"
    text += yaml.safe_dump({"large_files": entries}, sort_keys=False)
    (root / LARGE_FILES).write_text(text)
    return entries


def checksum_text(root: Path, members: Sequence[str]) -> str:
    """``sha256sum``-format lines ``<hex>  <path>`` for ``members``, in their (sorted) order."""
    return "".join(f"{file_digest(root / member)}  {member}\n" for member in members)


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, so external_attr holds the mode on every platform
    info.external_attr = ZIP_MODE << 16
    return info


def build_archive(root: Path, dist_dir: Path) -> tuple[Path, str]:
    """Pack ``root`` into ``dist_dir/<name>_v<version>.zip``; return its path and sha256."""
    name, version = read_name_version(root)
    weights = [entry["path"] for entry in read_large_files(root)]
    members = collect_members(root, exclude=weights)
    entries = {f"{name}/{member}": (root / member).read_bytes() for member in members}
    entries[f"{name}/{CHECKSUM_FILE}"] = checksum_text(root, members).encode()
    dist_dir.mkdir(parents=True, exist_ok=True)
    archive = dist_dir / f"{name}_v{version}.zip"
    part = archive.with_name(f"{archive.name}.part")
    try:
        # written beside the target and renamed, so a failed build never leaves a half archive
        with zipfile.ZipFile(part, "w") as bundle_zip:
            for entry_name in sorted(entries):
                bundle_zip.writestr(_zip_entry(entry_name), entries[entry_name], compresslevel=9)
        os.replace(part, archive)
    finally:
        part.unlink(missing_ok=True)
    digest = file_digest(archive)
    Path(f"{archive}.sha256").write_text(f"{digest}  {archive.name}\n")
    return archive, digest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="bundle root to pack")
    parser.add_argument("--dist-dir", type=Path, default=None, help="output folder (default: <root>/dist)")
    parser.add_argument("--weights", nargs="+", default=[], help="weight files (relative to root) for large_files.yml")
    parser.add_argument("--base-url", default=None, help="URL of the folder the weight files are uploaded to")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if bool(args.weights) != bool(args.base_url):
            raise PackError("--weights and --base-url go together: the URL of each weight is <base-url>/<file name>")
        if args.weights:
            for entry in write_large_files(root, args.weights, args.base_url):
                print(f"{root / LARGE_FILES}: {entry['path']} sha256 {entry['hash_val']} <- {entry['url']}")
        elif not (root / LARGE_FILES).exists():
            print(f"warning: {root / LARGE_FILES} is absent, the archive lists no weights", file=sys.stderr)
        if not any((root / readme).is_file() for readme in ("README.md", "docs/README.md")):
            print(f"warning: {root} has neither README.md nor docs/README.md", file=sys.stderr)
        archive, digest = build_archive(root, args.dist_dir or root / "dist")
    except PackError as error:
        print(f"pack_bundle: {error}", file=sys.stderr)
        return 2
    print(f"{archive}")
    print(f"sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
