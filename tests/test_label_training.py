"""bundle.label.training: datastore labels -> the bundle's sync / pretrain config -> served weights.

In-process on a small network, a few real demo images and one epoch; the HTTP side (the same
code run by the server's train subprocess) is in test_label_server.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from label_support import REPO_ROOT, small_net_overrides, write_checkpoint

from bundle.data import load_registry, load_samples
from bundle.label.inference import file_digest
from bundle.label.training import LABEL_DATASET, LabelFineTuner, write_training_inputs
from bundle.prompts import DEFAULT_VOCABULARY

HEADS = REPO_ROOT / "data" / "demo" / "segmentation" / "Fetal_HC"


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    images = sorted((HEADS / "imgs").glob("*.png"))[:3]
    return [{"image": str(image), "label": str(HEADS / "masks" / image.name)} for image in images]


@pytest.fixture
def tuner(tmp_path) -> LabelFineTuner:
    """A tuner serving an untrained small-network checkpoint in ``tmp_path``."""
    overrides = small_net_overrides(tmp_path)
    # seed 1: unlike the configs' seed 0, a run that ignored the served weights would show
    model = write_checkpoint(overrides, tmp_path / "model.pt", seed=1)
    return LabelFineTuner(REPO_ROOT, model, overrides, DEFAULT_VOCABULARY, device="cpu")


def test_training_inputs_are_a_registry_and_datalist_the_bundle_reads(pairs, tmp_path):
    registry_file, datalist = write_training_inputs(pairs, "head", "organ", DEFAULT_VOCABULARY, tmp_path)
    registry = load_registry(registry_file)
    spec = registry.get(LABEL_DATASET, "segmentation")
    assert (spec.organ, spec.object_type, spec.mask_values) == ("head", "organ", (0, 255))
    assert registry.vocabulary == DEFAULT_VOCABULARY
    for split in ("train", "val"):
        samples = load_samples(registry, split, datalist)
        assert [s["image"] for s in samples] == [p["image"] for p in pairs]
        assert [s["label"] for s in samples] == [p["label"] for p in pairs]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "everything"}, r"unknown train mode 'everything'; allowed: \['sync', 'full'\]"),
        ({"epochs": 0}, "max_epochs must be >= 1"),
        ({"organ": "spleen"}, "unknown position prompt 'spleen'"),
        ({"pairs": []}, "no final labels"),
    ],
    ids=["mode", "epochs", "organ", "no-labels"],
)
def test_a_bad_request_stops_before_training_and_keeps_the_served_weights(tuner, pairs, change, message):
    request = {"pairs": pairs, "mode": "sync", "epochs": 1, "organ": "head", "object_type": "organ", **change}
    before = file_digest(tuner.model_path)
    with pytest.raises(ValueError, match=message):
        tuner.run(**request)
    assert file_digest(tuner.model_path) == before
    assert tuner.last_run() == {}


@pytest.mark.parametrize("mode", ["sync", "full"])
def test_one_epoch_from_the_served_weights_publishes_new_ones_and_sync_changes_only_prompt_layers(tuner, pairs, mode):
    before = torch.load(tuner.model_path)
    result = tuner.run(pairs, mode=mode, epochs=1, organ="head", object_type="organ")
    after = torch.load(tuner.model_path)
    assert after.keys() == before.keys()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed
    prompt_layers = {key for key in changed if ".prompt_proj." in key}
    assert (changed == prompt_layers) == (mode == "sync")
    # one Adam step moves a weight by about the learning rate, a fresh initialisation by far more
    assert max(float((after[key] - before[key]).abs().max()) for key in changed) < 0.01
    assert result["weights"] == file_digest(tuner.model_path) != result["weights_before"]
    assert tuner.last_run() == result and result["mode"] == mode and result["labels"] == len(pairs)
