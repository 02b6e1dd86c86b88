"""Release and download of the bundle, end to end on loopback (scripts/pack_bundle.py, scripts/verify_bundle.py).

A local ``http.server`` on a free 127.0.0.1 port serves ``dist/`` and the weights. The user's
first download runs MONAI's own ``download`` and ``download_large_files`` commands as subprocesses
(any network access other than loopback goes through a dead proxy and fails); the repeat and
tampering cases call the same MONAI functions in-process, since each MONAI command start costs
several seconds of imports on this machine.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import pytest
from monai.apps.utils import HashCheckError
from monai.bundle import download, download_large_files, verify_metadata

from tests.conftest import REPO_ROOT, write_checkpoint

PACK_SCRIPT = REPO_ROOT / "scripts" / "pack_bundle.py"
METADATA = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())
NAME, VERSION = METADATA["name"], METADATA["version"]
SCHEMA = Path("configs", "schema", "meta_schema_20240725.json")
WEIGHTS = "models/pretrained.pt"
# loopback goes direct, anything else hits a closed port
NETWORK_ENV = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": "127.0.0.1,localhost"}


def _pack_module():
    spec = importlib.util.spec_from_file_location("pack_bundle", PACK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pack_bundle = _pack_module()


def run(*args: str | Path, cwd: Path = REPO_ROOT, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the test's network settings; with ``check`` a failure shows its output."""
    env = {**os.environ, **NETWORK_ENV, **{key.upper(): value for key, value in NETWORK_ENV.items()}}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def monai_bundle(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "monai.bundle", *args, check=check)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (bytes by posix relative path), without Python caches."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and "__pycache__" not in relative:
            files[relative] = path.read_bytes()
    return files


def flip_one_byte(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        pass


@dataclass
class Release:
    source: Path  # the packed tree, with its weights
    served: Path  # what the HTTP server serves: dist/ and weights/
    base_url: str
    archive: Path
    sha256: str

    @property
    def archive_url(self) -> str:
        return f"{self.base_url}/dist/{self.archive.name}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    served = tmp_path_factory.mktemp("served")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _write_weights(path: Path) -> None:
    """A real self-describing PerceptGuide checkpoint of the tiny test network (small file, fast inference)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(path)


@pytest.fixture(scope="module")
def release(server, tmp_path_factory) -> Release:
    """The repo's packable files copied to a scratch tree, with weights, packed into the served dist/."""
    served, base_url = server
    source = tmp_path_factory.mktemp("source")
    for member in pack_bundle.collect_members(REPO_ROOT):
        (source / member).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / member, source / member)
    _write_weights(source / WEIGHTS)
    (served / "weights").mkdir()
    shutil.copyfile(source / WEIGHTS, served / "weights" / Path(WEIGHTS).name)
    result = run(
        sys.executable, PACK_SCRIPT, "--root", source, "--dist-dir", served / "dist",
        "--weights", WEIGHTS, "--base-url", f"{base_url}/weights",
    )  # fmt: skip
    digest = re.search(r"^sha256 ([0-9a-f]{64})$", result.stdout, re.M).group(1)
    return Release(source, served, base_url, served / "dist" / f"{NAME}_v{VERSION}.zip", digest)


@pytest.fixture(scope="module")
def downloaded(release, tmp_path_factory) -> Path:
    """DIR of a user who ran MONAI's download and download_large_files commands."""
    bundle_dir = tmp_path_factory.mktemp("user")
    monai_bundle("download", "--name", NAME, "--version", VERSION, "--url", release.archive_url, "--bundle_dir", bundle_dir)
    monai_bundle("download_large_files", "--bundle_path", bundle_dir / NAME)
    return bundle_dir


def test_packing_twice_gives_the_same_archive(release, tmp_path):
    result = run(sys.executable, PACK_SCRIPT, "--root", release.source, "--dist-dir", tmp_path)
    assert f"sha256 {release.sha256}" in result.stdout
    assert (tmp_path / release.archive.name).read_bytes() == release.archive.read_bytes()
    assert hashlib.sha256(release.archive.read_bytes()).hexdigest() == release.sha256
    assert (release.served / "dist" / f"{release.archive.name}.sha256").read_text().split()[0] == release.sha256


def test_archive_has_one_sorted_folder_with_fixed_metadata_and_no_weights(release):
    with zipfile.ZipFile(release.archive) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        sums = archive.read(f"{NAME}/SHA256SUMS").decode()
    assert names == sorted(names)
    assert {name.split("/", 1)[0] for name in names} == {NAME}
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {info.external_attr >> 16 for info in infos} == {0o100644}
    members = [name.split("/", 1)[1] for name in names]
    assert WEIGHTS not in members and not any(name.endswith(".pt") for name in members)
    for required in (
        "LICENSE", "configs/metadata.json", "large_files.yml", "bundle/__init__.py", "scripts/verify_bundle.py",
        "apps/monailabel/main.py", "scripts/label_server.sh",
    ):  # fmt: skip
        assert required in members
    listed = [line.split("  ", 1)[1] for line in sums.splitlines()]
    assert listed == sorted(set(members) - {"SHA256SUMS"})


def test_archive_ships_the_product_not_the_lab(release):
    """No file of benchmarks/ or tests/, and no benchmark module under another folder (e.g. scripts/)."""
    with zipfile.ZipFile(release.archive) as archive:
        members = [PurePosixPath(name.split("/", 1)[1]) for name in archive.namelist()]
    lab_modules = {path.name for path in (REPO_ROOT / "benchmarks").glob("*.py")} - {"__init__.py"}
    assert "benchmark.py" in lab_modules
    assert [str(m) for m in members if m.parts[0] in ("benchmarks", "tests") or m.name in lab_modules] == []


def test_large_files_lists_the_weights_in_monai_format(release):
    import yaml

    entries = yaml.safe_load((release.source / "large_files.yml").read_text())["large_files"]
    digest = hashlib.sha256((release.source / WEIGHTS).read_bytes()).hexdigest()
    assert entries == [
        {"path": WEIGHTS, "url": f"{release.base_url}/weights/{Path(WEIGHTS).name}", "hash_val": digest, "hash_type": "sha256"}
    ]


def test_download_reproduces_the_packed_tree_and_verifies(release, downloaded):
    bundle = downloaded / NAME
    with zipfile.ZipFile(release.archive) as archive:
        packed = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    packed[WEIGHTS] = (release.source / WEIGHTS).read_bytes()
    assert tree(bundle) == packed
    checked = run(
        sys.executable, bundle / "scripts" / "verify_bundle.py", "--bundle_path", bundle,
        "--archive", downloaded / f"{NAME}.zip", "--sha256", f"{release.archive}.sha256",
    )  # fmt: skip
    assert "verify_bundle: OK" in checked.stdout
    schema_md5 = hashlib.md5((REPO_ROOT / SCHEMA).read_bytes()).hexdigest()
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(bundle / SCHEMA), hash_val=schema_md5)


def test_downloading_twice_is_idempotent(release, downloaded):
    def snapshot() -> dict[str, tuple[str, int]]:
        return {
            path.relative_to(downloaded).as_posix(): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in downloaded.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }

    before = snapshot()
    download(name=NAME, version=VERSION, url=release.archive_url, bundle_dir=str(downloaded))
    download_large_files(bundle_path=str(downloaded / NAME))
    assert snapshot() == before


def test_tampered_weights_are_refused_and_leave_nothing(release, downloaded, tmp_path):
    bundle = tmp_path / NAME
    shutil.copytree(downloaded / NAME, bundle)
    (bundle / WEIGHTS).unlink()
    files_before = set(tree(tmp_path))
    served_weights = release.served / "weights" / Path(WEIGHTS).name
    genuine = served_weights.read_bytes()
    served_weights.write_bytes(flip_one_byte(genuine, len(genuine) // 2))
    try:
        with pytest.raises(HashCheckError, match="hash check of downloaded file failed"):
            download_large_files(bundle_path=str(bundle))
    finally:
        served_weights.write_bytes(genuine)
    assert set(tree(tmp_path)) == files_before  # no weights, no partial file
    checked = run(sys.executable, bundle / "scripts" / "verify_bundle.py", "--bundle_path", bundle, check=False)
    assert checked.returncode == 1 and f"absent: {WEIGHTS}" in checked.stdout


def test_corrupt_local_weights_are_reported_by_monai_and_the_checker(downloaded, tmp_path):
    bundle = tmp_path / NAME
    shutil.copytree(downloaded / NAME, bundle)
    weights = bundle / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # e.g. an interrupted copy
    with pytest.raises(HashCheckError, match="hash check of existing file failed"):
        download_large_files(bundle_path=str(bundle))
    checked = run(sys.executable, bundle / "scripts" / "verify_bundle.py", "--bundle_path", bundle, check=False)
    assert checked.returncode == 1 and f"modified: {WEIGHTS}" in checked.stdout


def test_tampered_archive_is_detected_by_the_checksum_check(release, tmp_path):
    target = "bundle/prompts.py"
    tampered = release.served / "tampered" / release.archive.name
    tampered.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(release.archive) as genuine, zipfile.ZipFile(tampered, "w") as forged:
        for info in genuine.infolist():
            data = genuine.read(info)
            if info.filename == f"{NAME}/{target}":
                data = flip_one_byte(data, len(data) // 2)
            forged.writestr(info, data)
    bundle_dir = tmp_path / "user"
    download(name=NAME, version=VERSION, url=f"{release.base_url}/tampered/{release.archive.name}", bundle_dir=str(bundle_dir))
    checked = run(
        sys.executable, bundle_dir / NAME / "scripts" / "verify_bundle.py", "--bundle_path", bundle_dir / NAME,
        "--archive", bundle_dir / f"{NAME}.zip", "--sha256", release.sha256, check=False,
    )  # fmt: skip
    assert checked.returncode == 1
    assert f"modified: {target} (sha256 differs from SHA256SUMS)" in checked.stdout
    assert f"modified: {target} in {bundle_dir / NAME}.zip" in checked.stdout
    assert f"is not the published {release.sha256}" in checked.stdout


def _infer(bundle_root: Path, images: Path, out: Path, checkpoint: Path | str) -> dict[str, bytes]:
    """The documented inference command, run from ``bundle_root``: the checkpoint says which network it is."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml"]
    command += ["--input_dir", str(images), "--output_dir", str(out), "--organ", "breast", "--object_type", "tumor"]
    run(*command, "--ckpt_path", checkpoint, cwd=bundle_root)
    return tree(out)


def test_inference_from_the_download_equals_inference_from_the_source(release, downloaded, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for image in sorted((REPO_ROOT / "data" / "demo" / "segmentation" / "BUSI" / "imgs").glob("*.png"))[:3]:
        shutil.copyfile(image, images / image.name)
    from_source = _infer(REPO_ROOT, images, tmp_path / "source_out", release.source / WEIGHTS)
    from_download = _infer(downloaded / NAME, images, tmp_path / "download_out", WEIGHTS)
    masks = sorted(f"{image.stem}.png" for image in images.iterdir())
    assert set(masks) <= set(from_source)
    assert {name: from_download.get(name) for name in masks} == {name: from_source[name] for name in masks}
    assert set(from_download) == set(from_source)


def _minimal_tree(root: Path, metadata: dict) -> Path:
    for name, text in {"LICENSE": "licence", "bundle/__init__.py": "", "configs/metadata.json": json.dumps(metadata)}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    "metadata, arguments, message",
    [
        ({"version": "0.1.0"}, [], "configs/metadata.json: key 'name'"),
        ({"name": "a.b", "version": "0.1.0"}, [], "key 'name' must not contain '.'"),
        ({"name": "x", "version": "0.1.0"}, ["--weights", "models/none.pt", "--base-url", "http://h"], "no such file"),
        ({"name": "x", "version": "0.1.0"}, ["--weights", "../outside.pt", "--base-url", "http://h"], "inside the bundle"),
        ({"name": "x", "version": "0.1.0"}, ["--weights", "models/none.pt"], "--weights and --base-url go together"),
    ],
)
def test_pack_refuses_bad_input_naming_the_cause(tmp_path, capsys, metadata, arguments, message):
    root = _minimal_tree(tmp_path / "tree", metadata)
    assert pack_bundle.main(["--root", str(root), "--dist-dir", str(tmp_path / "dist"), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_pack_ships_the_label_app_without_what_a_monai_label_server_wrote_into_it(tmp_path):
    root = _minimal_tree(tmp_path / "tree", {"name": "x", "version": "0.1.0"})
    app = root / "apps" / "monailabel"
    for name in ("main.py", "lib/infers/perceptguide.py", "logs/app.log", "model/model.pt", "bin/tool"):
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(name)
    members = [member for member in pack_bundle.collect_members(root) if member.startswith("apps/")]
    assert members == ["apps/monailabel/lib/infers/perceptguide.py", "apps/monailabel/main.py"]


def test_pack_refuses_symlinks(tmp_path, capsys):
    root = _minimal_tree(tmp_path / "tree", {"name": "x", "version": "0.1.0"})
    (root / "configs" / "link.yaml").symlink_to(root / "LICENSE")
    assert pack_bundle.main(["--root", str(root), "--dist-dir", str(tmp_path / "dist")]) == 2
    assert "link.yaml: only regular files" in capsys.readouterr().err


def test_verify_refuses_a_malformed_checksum_file(tmp_path):
    (tmp_path / "SHA256SUMS").write_text("not-a-digest  LICENSE\n")
    checked = run(sys.executable, REPO_ROOT / "scripts" / "verify_bundle.py", "--bundle_path", tmp_path, check=False)
    assert checked.returncode == 2 and "SHA256SUMS: line 1 is not '<sha256>  <relative path>'" in checked.stderr
