"""Check a downloaded bundle (and optionally its archive) against the checksums it was released with.

MONAI's ``download_large_files`` checks the weights' sha256 when it fetches them; ``download``
checks nothing. This script checks the rest:

- every file listed in the bundle's ``SHA256SUMS`` (written by ``scripts/pack_bundle.py``) exists
  and has that sha256, and no unlisted file was added to the packed folders (configs/, bundle/, ...);
- every weight file in ``large_files.yml`` is present and has its recorded hash;
- with ``--archive``: every member of the downloaded zip matches the ``SHA256SUMS`` inside it, and
  with ``--sha256`` the archive itself has the published sha256 (the ``.zip.sha256`` file of the release).

Usage, after ``python -m monai.bundle download ... --bundle_dir DIR`` and ``download_large_files``::

    python DIR/<name>/scripts/verify_bundle.py --bundle_path DIR/<name> \\
        [--archive DIR/<name>.zip --sha256 <hex or path of <name>_v<version>.zip.sha256>]

Exit status 0 when everything matches, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import yaml

from bundle.hashing import file_digest

CHECKSUM_FILE = "SHA256SUMS"
LARGE_FILES = "large_files.yml"
HEX = set("0123456789abcdef")


def parse_checksums(text: str, origin: str) -> dict[str, str]:
    """``{path: sha256}`` from ``sha256sum``-format text; a malformed line raises ValueError naming ``origin``."""
    listed = {}
    for number, line in enumerate(text.splitlines(), start=1):
        digest, _, path = line.partition("  ")
        relative = PurePosixPath(path)
        if len(digest) != 64 or not set(digest) <= HEX or not path or relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{origin}: line {number} is not '<sha256>  <relative path>': {line!r}")
        listed[path] = digest
    return listed


def _is_cache(relative: PurePosixPath) -> bool:
    """Python writes these when the bundle runs; they are not part of the release."""
    return "__pycache__" in relative.parts or relative.suffix == ".pyc"


def check_tree(bundle_path: Path) -> list[str]:
    """Problems of an extracted bundle against its SHA256SUMS and large_files.yml (empty list: all good)."""
    sums_file = bundle_path / CHECKSUM_FILE
    if not sums_file.is_file():
        return [f"missing: {sums_file} (not a bundle packed by scripts/pack_bundle.py?)"]
    listed = parse_checksums(sums_file.read_text(), str(sums_file))
    problems = []
    for path, digest in listed.items():
        target = bundle_path / path
        if not target.is_file():
            problems.append(f"missing: {path}")
        elif file_digest(target) != digest:
            problems.append(f"modified: {path} (sha256 differs from {CHECKSUM_FILE})")
    large_files = _large_files(bundle_path)
    known = set(listed) | {CHECKSUM_FILE} | {entry["path"] for entry in large_files}
    packed_tops = {PurePosixPath(path).parts[0] for path in listed if len(PurePosixPath(path).parts) > 1}
    for path in sorted(bundle_path.rglob("*")):
        relative = PurePosixPath(path.relative_to(bundle_path).as_posix())
        if path.is_file() and relative.parts[0] in packed_tops and not _is_cache(relative):
            if relative.as_posix() not in known:
                problems.append(f"unexpected: {relative} (not in {CHECKSUM_FILE})")
    for entry in large_files:
        target = bundle_path / entry["path"]
        hash_type = entry.get("hash_type") or "sha256"  # monai.apps.download_url's default
        if not target.is_file():
            problems.append(
                f"absent: {entry['path']} (run: python -m monai.bundle download_large_files --bundle_path {bundle_path})"
            )
        elif entry.get("hash_val") and file_digest(target, hash_type) != entry["hash_val"]:
            problems.append(f"modified: {entry['path']} ({hash_type} differs from {LARGE_FILES}; delete it and download again)")
    return problems


def _large_files(bundle_path: Path) -> list[dict]:
    path = bundle_path / LARGE_FILES
    if not path.is_file():
        return []
    content = yaml.safe_load(path.read_text()) or {}
    entries = content.get("large_files", []) if isinstance(content, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) and entry.get("path") for entry in entries):
        raise ValueError(f"{path}: 'large_files' must be a list of entries with a 'path'")
    return entries


def check_archive(archive: Path, expected_sha256: str | None) -> list[str]:
    """Problems of a downloaded zip: its own sha256 (if given) and its members against its SHA256SUMS."""
    problems = []
    if expected_sha256 is not None and file_digest(archive) != expected_sha256:
        problems.append(f"modified: {archive} (sha256 {file_digest(archive)} is not the published {expected_sha256})")
    with zipfile.ZipFile(archive) as bundle_zip:
        names = [name for name in bundle_zip.namelist() if not name.endswith("/")]
        tops = {name.split("/", 1)[0] for name in names}
        if len(tops) != 1:
            return problems + [f"malformed: {archive} has {len(tops)} top-level folders, expected one"]
        top = tops.pop()
        sums_name = f"{top}/{CHECKSUM_FILE}"
        if sums_name not in names:
            return problems + [f"missing: {sums_name} in {archive}"]
        listed = parse_checksums(bundle_zip.read(sums_name).decode(), f"{archive}:{sums_name}")
        members = {name[len(top) + 1 :] for name in names} - {CHECKSUM_FILE}
        for path in sorted(members - set(listed)):
            problems.append(f"unexpected: {path} in {archive} (not in {CHECKSUM_FILE})")
        for path, digest in listed.items():
            if path not in members:
                problems.append(f"missing: {path} in {archive}")
            elif hashlib.sha256(bundle_zip.read(f"{top}/{path}")).hexdigest() != digest:
                problems.append(f"modified: {path} in {archive} (sha256 differs from {CHECKSUM_FILE})")
    return problems


def _expected_sha256(value: str) -> str:
    """A hex digest given directly, or read from a ``sha256sum``-format file."""
    candidate = value.strip().lower()
    if len(candidate) != 64 or not set(candidate) <= HEX:
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"--sha256 {value!r} is neither a sha256 hex digest nor a file")
        candidate = (path.read_text().split() or [""])[0].lower()
        if len(candidate) != 64 or not set(candidate) <= HEX:
            raise ValueError(f"{path}: does not start with a sha256 hex digest")
    return candidate


def _report(problems: Iterable[str]) -> int:
    problems = list(problems)
    for problem in problems:
        print(problem)
    print(f"verify_bundle: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'OK'}")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_path", type=Path, default=None, help="extracted bundle folder (default: this script's bundle)")
    parser.add_argument("--archive", type=Path, default=None, help="downloaded zip to check as well")
    parser.add_argument("--sha256", default=None, help="published sha256 of the archive: hex digest or .sha256 file")
    args = parser.parse_args(argv)
    if args.sha256 is not None and args.archive is None:
        parser.error("--sha256 is the archive's hash: give --archive too")
    bundle_path = (args.bundle_path or Path(__file__).resolve().parents[1]).resolve()
    try:
        problems = check_tree(bundle_path)
        if args.archive is not None:
            expected = _expected_sha256(args.sha256) if args.sha256 is not None else None
            problems += check_archive(args.archive, expected)
    except (OSError, ValueError, zipfile.BadZipFile, yaml.YAMLError) as error:
        print(f"verify_bundle: {error}", file=sys.stderr)
        return 2
    return _report(problems)


if __name__ == "__main__":
    sys.exit(main())
