"""Adapting a trained checkpoint: growing its organ vocabulary and choosing the weights that learn."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bundle.data import dataset_weights, labelled_weights, load_registry, with_rehearsal
from bundle.data.user_folder import main as make_datalist_main
from bundle.networks import read_checkpoint
from bundle.networks.vocabulary_growth import ORGAN_INPUT_WEIGHT
from bundle.prompts import DEFAULT_VOCABULARY, PROMPT_KEYS
from bundle.workflows.sync import trainable_parameters
from tests.bundle_runner import bare_inference, run_bundle
from tests.conftest import REPO_ROOT, TINY_SIZE, tiny_network, write_checkpoint
from tests.test_workflows import parsed

NERVE_DATASET = "- {name: NERVE, task: segmentation, organ: nerve, object_type: organ, classes: {background: 0, nerve: 255}}\n"


def trained_like_network():
    """The tiny network with a convolutional skip path and random prompt weights (the initial ones are
    near-constant), so that every organ gives another output."""
    network = tiny_network(conv_skips=4, patch_embed="conv", prompt_init="unit")
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "prompt_proj" in name or ".hyper." in name:
                parameter.normal_(0.0, 0.5)
    return network.eval()


def write_registry(tmp_path, extra_organs: str):
    path = tmp_path / "datasets.yaml"
    path.write_text(f"extra_organs: {extra_organs}\ndatasets:\n{NERVE_DATASET}")
    return load_registry(path)


def outputs(network, vocabulary, organ: str, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    names = {"position": organ, "task": "segmentation", "mode": "whole", "type": "organ"}
    with torch.no_grad():
        return network(image, vocabulary.encode(names))


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "trained.pt", trained_like_network())


def test_a_grown_vocabulary_leaves_every_old_organ_bit_identical(tmp_path, checkpoint):
    registry = write_registry(tmp_path, "[{name: nerve, init_from: breast}]")
    original = read_checkpoint(checkpoint)
    grown = original.grown(registry)
    assert grown.description.vocabulary["position"] == [*DEFAULT_VOCABULARY.organs, "nerve"]
    assert grown.description.arguments["prompt_sizes"]["position"] == len(DEFAULT_VOCABULARY.organs) + 1
    assert original.description.vocabulary["position"] == list(DEFAULT_VOCABULARY.organs)  # not mutated
    before, after = original.build(), grown.build()
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(1))
    old_vocabulary, new_vocabulary = original.description.prompt_vocabulary, grown.description.prompt_vocabulary
    seen = set()
    for organ in DEFAULT_VOCABULARY.organs:
        seg_before, cls_before = outputs(before, old_vocabulary, organ, image)
        seg_after, cls_after = outputs(after, new_vocabulary, organ, image)
        assert torch.equal(seg_before, seg_after) and torch.equal(cls_before, cls_after), organ
        seen.add(seg_before.sum().item())
    assert len(seen) == len(DEFAULT_VOCABULARY.organs)  # the organs do steer this network
    # init_from copies the named organ's columns: the new organ starts where breast is
    assert torch.equal(outputs(after, new_vocabulary, "nerve", image)[0], outputs(before, old_vocabulary, "breast", image)[0])


def test_a_new_organ_without_init_from_starts_from_the_mean_of_the_known_ones(tmp_path, checkpoint):
    grown = read_checkpoint(checkpoint).grown(write_registry(tmp_path, "[nerve]"))
    for key, value in grown.state_dict.items():
        if key.endswith("prompt_proj.position_prompt.weight"):
            organs = len(DEFAULT_VOCABULARY.organs)
            torch.testing.assert_close(value[:, organs], value[:, :organs].mean(dim=1))


def test_init_from_must_name_another_known_organ(tmp_path):
    with pytest.raises(ValueError, match="extra organ 'nerve' has init_from 'spleen'"):
        write_registry(tmp_path, "[{name: nerve, init_from: spleen}]")
    with pytest.raises(ValueError, match="'extra_organs' entry"):
        write_registry(tmp_path, "[{name: nerve, from: breast}]")


def test_a_checkpoint_that_knows_every_organ_is_not_grown(tmp_path, checkpoint):
    path = tmp_path / "known.yaml"
    path.write_text("datasets:\n- {name: B, task: segmentation, organ: breast, object_type: tumor, classes: {background: 0, t: 255}}\n")
    original = read_checkpoint(checkpoint)
    assert original.grown(load_registry(path)) is original
    assert list(PROMPT_KEYS) == list(original.description.vocabulary)


@pytest.mark.parametrize("parts", ["prompts", "norms", "decoders", "all"])
def test_trainable_parts_nest_and_leave_the_encoder_to_all(parts):
    network = trained_like_network()
    learning = {name for name, p in network.named_parameters() if p in set(trainable_parameters(network, parts))}
    everything = {name for name, _ in network.named_parameters()}
    prompts = {name for name in everything if ".prompt_proj." in name}
    assert prompts <= learning
    if parts != "all":
        assert not {name for name in learning if name.startswith(("encoder.", "patch_embed."))}
    if parts == "prompts":
        assert learning == prompts
    elif parts == "norms":
        assert learning - prompts and all(name.endswith((".weight", ".bias")) for name in learning)
        assert {n for n in learning - prompts if n.endswith(".weight")} <= {n for n in learning if "norm" in n}
    elif parts == "decoders":
        assert "seg_decoder.stages.0.blocks.0.mlp.linear1.weight" in learning
    else:
        assert learning == everything


def test_new_organs_learn_alone_and_every_old_organ_keeps_its_weights(tmp_path, checkpoint):
    grown = read_checkpoint(checkpoint).grown(write_registry(tmp_path, "[nerve]"))
    network = grown.build().train()
    trainable = trainable_parameters(network, "new_organs", new_organs=len(grown.new_organs))
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    vocabulary = grown.description.prompt_vocabulary
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    for organ in ("nerve", "breast"):  # breast: every gradient it makes is masked out
        seg, _ = network(image, vocabulary.encode({"position": organ, "task": "segmentation", "mode": "whole", "type": "organ"}))
        seg.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    organs = len(vocabulary.organs)
    for key, value in network.state_dict().items():
        before = grown.state_dict[key]
        if ORGAN_INPUT_WEIGHT.search(key):
            assert torch.equal(value[:, : organs - 1], before[:, : organs - 1]) and torch.equal(value[:, organs:], before[:, organs:])
            if not key.startswith("cls_decoder."):  # the segmentation loss reaches the seg side only
                assert not torch.equal(value[:, organs - 1], before[:, organs - 1]), key
        else:
            assert torch.equal(value, before), key
    with pytest.raises(ValueError, match="needs a registry organ the checkpoint lacks"):
        trainable_parameters(network, "new_organs", new_organs=0)


def test_rehearsal_draws_old_samples_at_their_share():
    samples = [{"task": "segmentation", "dataset": "new"}] * 30 + [
        {"task": "segmentation", "dataset": name, "rehearsal": 1} for name in ("A", "B") for _ in range(200)
    ]
    weights = labelled_weights(samples, 0.25)
    replayed = sum(w for w, s in zip(weights, samples) if s.get("rehearsal")) / sum(weights)
    assert replayed == pytest.approx(0.25)
    assert weights[30] == weights[-1]  # the old datasets keep the official balance among themselves
    assert labelled_weights(samples[:30], 0.25) == dataset_weights(samples[:30])
    with pytest.raises(ValueError, match="0 < rehearsal_share < 1"):
        labelled_weights(samples, 0.0)
    # the adaptation configs (and so make demo) replay at half, the share measured best (docs/README.md)
    assert parsed(["pretrain.yaml", "finetune.yaml"], "rehearsal_share") == 0.5


def test_rehearsal_registry_must_not_clash_with_the_new_one(tmp_path):
    new = write_registry(tmp_path, "[nerve]")
    clash = tmp_path / "old.yaml"
    clash.write_text(f"extra_organs: [nerve]\ndatasets:\n{NERVE_DATASET}")
    with pytest.raises(ValueError, match="declares 'NERVE' \\(segmentation\\), as registry"):
        with_rehearsal(new, clash)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("extra_organs: [spleen]\ndatasets:\n- {name: S, task: segmentation, organ: spleen, object_type: organ, classes: {background: 0, s: 255}}\n")
    with pytest.raises(ValueError, match="organ 'spleen', which the model does not know"):
        with_rehearsal(new, unknown)
    merged = with_rehearsal(new, REPO_ROOT / "data" / "demo" / "datasets.yaml")
    assert [spec.name for spec in merged.datasets] == ["NERVE", "BUSI", "Fetal_HC", "TG3K", "BUSI"]
    assert merged.vocabulary == new.vocabulary


def nerve_folder(root: Path) -> Path:
    """images/ + masks/ of six demo fetal-head images, as a user's dataset of a new organ."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for source in sorted((REPO_ROOT / "data" / "demo" / "segmentation" / "Fetal_HC" / "imgs").glob("*.png"))[:6]:
        shutil.copy(source, root / "images" / source.name)
        shutil.copy(source.parents[1] / "masks" / source.name, root / "masks" / source.name)
    return root


def test_a_new_organ_is_adapted_to_and_inferred_while_old_organs_answer_as_before(tmp_path, checkpoint):
    """make_datalist declares the organ, finetune grows the checkpoint and trains only the new organ's
    columns (replaying the demo datasets), and the bare inference command serves old and new organs."""
    folder = nerve_folder(tmp_path / "nerve")
    datalist, registry = tmp_path / "nerve.json", tmp_path / "datasets.yaml"
    make_datalist_main([str(folder), "--out", str(datalist), "--registry", str(registry), "--dataset", "Nerve",
                        "--task", "segmentation", "--organ", "nerve", "--new-organ", "--init-from", "head",
                        "--object-type", "organ"])  # fmt: skip
    assert load_registry(registry).organ_init == {"nerve": "head"}
    adapted = tmp_path / "adapted"
    run_bundle("pretrain", "finetune", overrides={
        "registry_file": registry, "datalist": datalist, "init_ckpt": checkpoint, "trainable": "new_organs",
        "rehearsal_registry_file": REPO_ROOT / "data" / "demo" / "datasets.yaml", "learning_rate": 1e-2,
        "ckpt_dir": adapted, "output_dir": tmp_path / "runs",
    })  # fmt: skip
    result = read_checkpoint(adapted / "model.pt")
    assert result.description.vocabulary["position"][-1] == "nerve"
    assert any(not torch.equal(value, read_checkpoint(checkpoint).grown(load_registry(registry)).state_dict[key])
               for key, value in result.state_dict.items())  # fmt: skip
    images = folder / "images"
    bare_inference(images, tmp_path / "nerve_out", adapted / "model.pt", "nerve", "organ")
    assert len(list((tmp_path / "nerve_out").glob("*_overlay.png"))) == 6
    # head is the init_from organ: its columns were copied, and its outputs must not move
    bare_inference(images, tmp_path / "before", checkpoint, "head", "organ")
    bare_inference(images, tmp_path / "after", adapted / "model.pt", "head", "organ")
    assert (tmp_path / "before" / "predictions.csv").read_text() == (tmp_path / "after" / "predictions.csv").read_text()
    for mask in (tmp_path / "before").glob("*.png"):
        assert mask.read_bytes() == (tmp_path / "after" / mask.name).read_bytes(), mask.name
