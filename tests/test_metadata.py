"""configs/metadata.json against MONAI's bundle metadata schema (kept in the repo) and the code."""

from __future__ import annotations

import hashlib
import json
import logging
import logging.config
import os
import subprocess
import sys
import tomllib

import pytest
import yaml
from monai.bundle import verify_metadata, verify_net_in_out

from bundle.hashing import file_digest
from bundle.networks import read_checkpoint
from bundle.prompts import DEFAULT_VOCABULARY, PROMPT_KEYS
from tests.conftest import REPO_ROOT

META_FILE = REPO_ROOT / "configs" / "metadata.json"
SCHEMA_FILE = REPO_ROOT / "configs" / "schema" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
# any attempt to reach the network goes through this dead proxy and fails
OFFLINE_ENV = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


def _metadata() -> dict:
    return json.loads(META_FILE.read_text())


def test_schema_copy_is_the_recorded_file():
    assert hashlib.md5(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_MD5


def test_verify_metadata_cli_passes_offline():
    env = {**os.environ, **{k.upper(): v for k, v in OFFLINE_ENV.items()}, **OFFLINE_ENV}
    command = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(META_FILE)]
    command += ["--filepath", str(SCHEMA_FILE), "--hash_val", SCHEMA_MD5, "--hash_type", "md5"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "skipped downloading" in output
    assert "metadata is verified with no error" in output


@pytest.mark.parametrize("key", ["version", "monai_version", "authors", "network_data_format"])
def test_verify_metadata_rejects_missing_required_key(tmp_path, key):
    broken = _metadata()
    del broken[key]
    broken_file = tmp_path / "metadata.json"
    broken_file.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=f"'{key}' is a required property"):
        verify_metadata(meta_file=str(broken_file), filepath=str(SCHEMA_FILE), hash_val=SCHEMA_MD5)


def test_verify_metadata_rejects_wrongly_typed_input_description(tmp_path):
    broken = _metadata()
    broken["network_data_format"]["inputs"]["image"]["num_channels"] = "three"
    broken_file = tmp_path / "metadata.json"
    broken_file.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(broken_file), filepath=str(SCHEMA_FILE), hash_val=SCHEMA_MD5)


@pytest.mark.parametrize("key", PROMPT_KEYS)
def test_prompt_inputs_follow_the_prompt_vocabulary(key):
    description = _metadata()["network_data_format"]["inputs"][f"{key}_prompt"]
    names = DEFAULT_VOCABULARY.names(key)
    assert description["num_channels"] == DEFAULT_VOCABULARY.sizes[key]
    assert [description["channel_def"][str(i)] for i in range(len(names))] == list(names)


def test_outputs_describe_segmentation_and_classification_logits():
    outputs = _metadata()["network_data_format"]["outputs"]
    # verify_net_in_out reads the segmentation output under the fixed key "pred"
    assert outputs["pred"]["num_channels"] == 2 and outputs["pred"]["format"] == "segmentation"
    assert outputs["cls_pred"]["num_channels"] == 2 and outputs["cls_pred"]["spatial_shape"] == []


def test_metadata_version_is_the_package_version():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    metadata = _metadata()
    assert metadata["version"] == project["version"]
    assert metadata["version"] in metadata["changelog"]


def test_logging_conf_sends_info_to_stdout():
    logging.config.fileConfig(REPO_ROOT / "configs" / "logging.conf", disable_existing_loggers=False)
    root = logging.getLogger()
    try:
        assert root.level == logging.INFO
        assert [type(h) for h in root.handlers] == [logging.StreamHandler]
        assert root.handlers[0].stream is sys.stdout
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)


@pytest.mark.parametrize("overrides", [{}, {"organ": "head", "object_type": "organ", "mode": "local"}])
def test_inference_network_matches_the_input_and_output_description(overrides, tiny_checkpoint):
    # the single-input view of configs/inference.yaml over a tiny checkpoint: the I/O contract does not depend on width
    verify_net_in_out(
        net_id="segmenter_def",
        meta_file=str(META_FILE),
        config_file=str(REPO_ROOT / "configs" / "inference.yaml"),
        device="cpu",
        ckpt_path=str(tiny_checkpoint),
        **overrides,
    )


def test_shipped_weights_are_listed_with_their_sha256_and_describe_their_network():
    entries = {entry["path"]: entry for entry in yaml.safe_load((REPO_ROOT / "large_files.yml").read_text())["large_files"]}
    weights = REPO_ROOT / "models" / "pretrained.pt"
    assert entries["models/pretrained.pt"]["hash_type"] == "sha256"
    assert file_digest(weights) == entries["models/pretrained.pt"]["hash_val"]
    checkpoint = read_checkpoint(weights)
    assert checkpoint.described and checkpoint.description.vocabulary["position"][:3] == ["ovary", "breast", "thyroid"]
    assert weights.stat().st_size < 50 * 2**20
    checkpoint.build()  # the weights fit the network they describe


@pytest.mark.parametrize("weights", ["pretrained.pt", "student.pt"])
def test_metadata_input_size_is_the_shipped_weights_input_size(weights):
    # a bundle user reads the network's input size from metadata.json; the shipped weights decide it
    image_size = read_checkpoint(REPO_ROOT / "models" / weights).description.image_size
    formats = _metadata()["network_data_format"]
    assert formats["inputs"]["image"]["spatial_shape"] == [image_size, image_size]
    assert formats["outputs"]["pred"]["spatial_shape"] == [image_size, image_size]
