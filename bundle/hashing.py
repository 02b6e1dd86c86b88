"""The one file-hash helper of the bundle (packing, verifying a download, the Label app's records)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_digest"]


def file_digest(path: str | Path, hash_type: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (``hash_type`` as in large_files.yml: md5, sha1, sha256, sha512)."""
    digest = hashlib.new(hash_type.lower())
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
