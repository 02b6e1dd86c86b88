"""apps/monailabel/lib/training.py: datastore labels -> the bundle's sync / fine-tuning stage -> served checkpoint.

In-process on the tiny network, a few real demo images and one epoch; the HTTP side (the same
code run by the server's train subprocess) is in test_label_server.py.
"""

from __future__ import annotations

import pytest
import torch

from apps.monailabel.lib.training import LABEL_DATASET, LabelFineTuner, write_training_inputs
from bundle.data import load_registry, load_samples
from bundle.hashing import file_digest
from bundle.networks import read_checkpoint
from bundle.prompts import DEFAULT_VOCABULARY
from bundle.workflows.sync import PROMPT_PARAMETER_TAG
from tests.conftest import REPO_ROOT
from tests.label_support import HEADS, head_images, served_checkpoint


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return [{"image": str(image), "label": str(HEADS / "masks" / image.name)} for image in head_images(3)]


@pytest.fixture
def tuner(tmp_path) -> LabelFineTuner:
    """A tuner serving an untrained tiny-network checkpoint in ``tmp_path``."""
    # seed 1: unlike the configs' seed 0, a run that ignored the served weights would show
    return LabelFineTuner(REPO_ROOT, served_checkpoint(tmp_path / "model.pt", seed=1), device="cpu")


def test_training_inputs_are_a_registry_and_datalist_the_bundle_reads(pairs, tmp_path):
    description = read_checkpoint(served_checkpoint(tmp_path / "model.pt")).description
    registry_file, datalist = write_training_inputs(pairs, "head", "organ", description, tmp_path)
    registry = load_registry(registry_file)
    spec = registry.get(LABEL_DATASET, "segmentation")
    assert (spec.organ, spec.object_type, spec.mask_values) == ("head", "organ", (0, 255))
    assert registry.vocabulary == DEFAULT_VOCABULARY
    for split in ("train", "val"):
        samples = load_samples(registry, split, datalist)
        assert [s["image"] for s in samples] == [p["image"] for p in pairs]
        assert [s["label"] for s in samples] == [p["label"] for p in pairs]


def test_training_inputs_follow_a_served_model_with_an_extra_organ_and_three_classes(pairs, tmp_path):
    vocabulary = DEFAULT_VOCABULARY.extended(["spleen"])
    model = served_checkpoint(
        tmp_path / "model.pt",
        network_options={"seg_classes": 3, "prompt_sizes": vocabulary.sizes},
        vocabulary=vocabulary,
        seg_classes=["background", "cyst", "solid"],
    )
    registry_file, _ = write_training_inputs(pairs, "spleen", "organ", read_checkpoint(model).description, tmp_path)
    registry = load_registry(registry_file)
    spec = registry.get(LABEL_DATASET, "segmentation")
    assert registry.vocabulary == vocabulary
    # masks of a multi-class model hold class indices, as /infer writes them
    assert (spec.classes, spec.mask_values) == (("background", "cyst", "solid"), (0, 1, 2))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "everything"}, r"unknown train mode 'everything'; allowed: \['sync', 'full'\]"),
        ({"epochs": 0}, "max_epochs must be >= 1"),
        ({"organ": "spleen"}, "organ 'spleen' is not in the vocabulary of checkpoint"),
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
def test_one_epoch_from_the_served_checkpoint_publishes_the_stages_model_and_sync_changes_only_prompt_layers(
    tuner, pairs, mode
):
    before = read_checkpoint(tuner.model_path)
    result = tuner.run(pairs, mode=mode, epochs=1, organ="head", object_type="organ")
    after = read_checkpoint(tuner.model_path)
    assert after.described and after.description.to_dict() == before.description.to_dict()
    assert after.state_dict.keys() == before.state_dict.keys()
    changed = {key for key, value in before.state_dict.items() if not torch.equal(value, after.state_dict[key])}
    assert changed
    prompt_layers = {key for key in changed if PROMPT_PARAMETER_TAG in key}
    assert (changed == prompt_layers) == (mode == "sync")
    # one Adam step moves a weight by about the learning rate, a fresh initialisation by far more
    assert max(float((after.state_dict[key] - before.state_dict[key]).abs().max()) for key in changed) < 0.01
    assert result["weights"] == file_digest(tuner.model_path) != result["weights_before"]
    assert tuner.last_run() == result and result["mode"] == mode and result["labels"] == len(pairs)
