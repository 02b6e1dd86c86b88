"""Self-describing checkpoints (bundle.networks.model_file): written, read, refused, and the three file kinds."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from bundle.data import load_registry
from bundle.networks import (
    PerceptGuide,
    convert_official_state_dict,
    describe,
    initialise_from,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from bundle.networks.model_file import ModelDescription
from bundle.prompts import DEFAULT_VOCABULARY
from tests.conftest import DEMO_DIR, TINY_SIZE, tiny_network, write_checkpoint

PROMPTS = DEFAULT_VOCABULARY.encode({"position": "thyroid", "task": "segmentation", "mode": "whole", "type": "organ"})


def outputs(network: torch.nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return network.eval()(image, PROMPTS)


@pytest.mark.parametrize("options", [{}, {"conv_skips": 8}])
def test_a_checkpoint_rebuilds_its_network_of_any_size_with_equal_outputs(tmp_path, options):
    network = tiny_network(seed=3, embed_dim=24, patch_embed="conv", prompt_init="unit", seg_classes=3, **options)
    path = write_checkpoint(tmp_path / "model.pt", network, seg_classes=["background", "cyst", "solid"])
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    rebuilt = load_model(path)
    for got, expected in zip(outputs(rebuilt, image), outputs(network, image)):
        assert torch.equal(got, expected)
    assert not rebuilt.training
    description = read_checkpoint(path).description
    assert description.seg_classes == ["background", "cyst", "solid"] and description.image_size == TINY_SIZE
    json.dumps(description.to_dict())  # plain data


def test_describe_takes_the_vocabulary_and_class_names_from_the_registry():
    registry = load_registry(DEMO_DIR / "datasets.yaml")
    description = describe(tiny_network(), registry, image_size=96)
    assert description.vocabulary["position"] == list(DEFAULT_VOCABULARY.organs)
    assert description.seg_classes == ["background", "tumor/head/thyroid"]
    assert description.cls_classes == ["benign", "malignant"]
    assert description.image_size == 96 and description.bundle_version != "unknown"


class _Payload:
    """Unpickling this would run code: it creates a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_needs_arbitrary_unpickling_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "pickled.pt"
    torch.save({"model": tiny_network().state_dict(), "extra": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match=f"checkpoint {path} needs arbitrary unpickling.*refused"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "cannot read checkpoint"),
        ({"weights": [1, 2]}, "does not hold a state dict"),
    ],
)
def test_unreadable_or_foreign_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=f"{message}") as error:
        load_model(path)
    assert str(path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "absent.pt")


def test_a_malformed_description_is_named_by_key(tmp_path):
    path = write_checkpoint(tmp_path / "model.pt")
    content = torch.load(path, weights_only=True)
    del content["description"]["vocabulary"]
    torch.save(content, path)
    with pytest.raises(ValueError, match="missing \\['vocabulary'\\]"):
        read_checkpoint(path)


def test_a_bare_state_dict_of_another_architecture_does_not_fit_the_paper_network(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(tiny_network().state_dict(), path)
    with pytest.raises(ValueError, match=f"checkpoint {path} does not fit PerceptGuide") as error:
        load_model(path)
    assert "shape mismatch" in str(error.value)


def test_an_official_checkpoint_of_the_paper_size_loads_with_the_paper_architecture(golden, tmp_path):
    """Official key names (from the golden fixture's official state dict) over paper-size tensors."""
    torch.manual_seed(0)
    paper = PerceptGuide().eval()
    ours = paper.state_dict()
    official = {}
    for key in golden["prompt"]["state_dict"]:
        (converted,) = convert_official_state_dict({key: torch.zeros(1, 1, 1, 1)}) or [None]
        if converted is not None:
            tensor = ours[converted]
            official[key] = tensor.reshape(1, *tensor.shape, 1) if ".attn.hyper." in converted else tensor
    path = tmp_path / "official.pth"
    torch.save({"model": official}, path)
    checkpoint = read_checkpoint(path)
    assert not checkpoint.described and checkpoint.description.image_size == 224
    image = torch.rand(1, 3, 224, 224)
    for got, expected in zip(outputs(checkpoint.build(), image), outputs(paper, image)):
        assert torch.equal(got, expected)


def test_an_encoder_checkpoint_is_no_model_to_run(tmp_path):
    network = tiny_network()
    description = ModelDescription(**{**read_checkpoint(write_checkpoint(tmp_path / "m.pt", network)).description.__dict__, "content": "encoder"})
    path = save_checkpoint(tmp_path / "encoder.pt", network, description)
    with pytest.raises(ValueError, match="holds only an encoder"):
        load_model(path)


def test_contradicting_values_and_unknown_prompts_name_the_checkpoint(tiny_checkpoint):
    checkpoint = read_checkpoint(tiny_checkpoint)
    assert checkpoint.check("image_size", None) == TINY_SIZE == checkpoint.check("image_size", TINY_SIZE)
    with pytest.raises(ValueError, match=f"image_size 96 contradicts checkpoint {tiny_checkpoint}, which was trained with image_size 64"):
        checkpoint.check("image_size", 96)
    checkpoint.check_prompts(organ="thyroid", object_type="organ")
    with pytest.raises(ValueError, match=f"organ 'nerve' is not in the vocabulary of checkpoint {tiny_checkpoint}"):
        checkpoint.check_prompts(organ="nerve")


def test_initialise_from_loads_shared_tensors_and_logs_what_kept_its_start(tmp_path, caplog):
    source = tiny_network(seed=1, prompt=False)  # no prompt projections: the decoders' ones keep their start
    path = write_checkpoint(tmp_path / "source.pt", source)
    target = tiny_network(seed=2)
    start = {key: value.clone() for key, value in target.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="bundle.networks.model_file"):
        initialise_from(target, path)
    shared = source.state_dict()
    for key, value in target.state_dict().items():
        assert torch.equal(value, shared[key] if key in shared else start[key]), key
    assert f"init_ckpt {path}: loaded {len(shared)} of {len(start)} tensors" in caplog.text
    assert "left at their initial values: cls_decoder, seg_decoder" in caplog.text
    assert initialise_from(target, None) is target


def test_initialise_from_refuses_a_checkpoint_of_another_width(tmp_path):
    path = write_checkpoint(tmp_path / "wide.pt", tiny_network(embed_dim=24))
    with pytest.raises(ValueError, match=f"init_ckpt {path} does not fit this network"):
        initialise_from(tiny_network(), path)
