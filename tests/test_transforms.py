"""bundle.transforms chains on the shipped demo data: keys, shapes, ranges, prompts per task x mode, inversion."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, decollate_batch
from monai.transforms import CenterSpatialCropd, Compose, Flipd, Invertd, Rotated, Zoomd
from PIL import Image

from bundle.data import load_registry, m2us_samples
from bundle.prompts import DEFAULT_VOCABULARY
from bundle.transforms import (
    GEOMETRIES,
    INFERENCE_KEYS,
    SAMPLE_KEYS,
    RandLetterboxInterpolated,
    RandOfficialCascaded,
    RandPromptModed,
    ShortSideInterpolated,
    ShortSideResized,
    inference_transforms,
    load_transforms,
    resize_to_square,
    train_transforms,
    val_transforms,
)
from bundle.transforms.prompt_mode import MODE_PROBABILITIES
from tests.conftest import DEMO_DIR

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def registry():
    return load_registry(DEMO_DIR / "datasets.yaml")


@pytest.fixture(scope="module")
def samples(registry):
    """One validation sample per (task, dataset)."""
    picked = {}
    for sample in m2us_samples(registry, "val"):
        picked.setdefault((sample["task"], sample["dataset"]), sample)
    return picked


def _check_sample(out: dict, source: dict, mode: str) -> None:
    assert set(out) == set(SAMPLE_KEYS)
    assert out["image"].shape == (3, SIZE, SIZE) and out["image"].dtype == torch.float32
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0 and float(out["image"].std()) > 0.05
    assert out["label"].shape == (1, SIZE, SIZE) and out["label"].dtype == torch.int64
    is_seg = source["task"] == "segmentation"
    assert set(out["label"].unique().tolist()) == ({0, 1} if is_seg else {0})
    assert out["cls_label"].shape == () and int(out["cls_label"]) == source["cls_label"]
    assert int(out["task_id"]) == (0 if is_seg else 1)
    expected = DEFAULT_VOCABULARY.encode(
        {"position": source["organ"], "task": source["task"], "mode": mode, "type": source["object_type"]}
    )
    for key, vector in expected.items():
        assert torch.equal(out[f"{key}_prompt"], vector), key
    assert out["dataset"] == source["dataset"]


TASK_MODES = [  # (task, dataset, requested mode, mode the sample gets)
    ("segmentation", "BUSI", "whole", "whole"),
    ("segmentation", "BUSI", "local", "local"),
    ("segmentation", "Fetal_HC", "local", "local"),
    ("segmentation", "TG3K", "location", "whole"),  # location is for classification samples (official)
    ("classification", "BUSI", "whole", "whole"),
    ("classification", "BUSI", "local", "local"),
    ("classification", "BUSI", "location", "location"),
]


@pytest.mark.parametrize("task, dataset, mode, applied", TASK_MODES)
def test_val_chain_gives_contract_sample_for_task_and_mode(registry, samples, task, dataset, mode, applied):
    source = samples[(task, dataset)]
    out = val_transforms(SIZE, registry, mode=mode)(source)
    _check_sample(out, source, applied)


def test_local_mode_zooms_onto_the_object(registry, samples):
    source = samples[("segmentation", "BUSI")]
    whole = val_transforms(SIZE, registry, mode="whole")(source)
    local = val_transforms(SIZE, registry, mode="local")(source)
    assert local["label"].float().mean() > 2 * whole["label"].float().mean()


def test_location_mode_brightens_the_object_only(registry, samples):
    source = samples[("classification", "BUSI")]
    whole = val_transforms(SIZE, registry, mode="whole")(source)["image"]
    marked = val_transforms(SIZE, registry, mode="location")(source)["image"]
    same_image_as_segmentation = dict(samples[("segmentation", "BUSI")], image=source["image"], label=source["mask"])
    mask = val_transforms(SIZE, registry, mode="whole")(same_image_as_segmentation)["label"][0] > 0
    difference = (marked - whole)[0]
    assert float(difference[mask].mean()) > 0.08
    assert float(difference[~mask].abs().mean()) < 0.01


def test_classification_dataset_without_masks_stays_whole(registry, samples):
    source = {k: v for k, v in samples[("classification", "BUSI")].items() if k != "mask"}
    out = val_transforms(SIZE, registry, mode="location")(source)
    _check_sample(out, source, "whole")


@pytest.mark.parametrize(
    "task, dataset", [("segmentation", "BUSI"), ("segmentation", "Fetal_HC"), ("classification", "BUSI")]
)
def test_train_chain_draws_every_allowed_mode_with_valid_samples(registry, samples, task, dataset):
    chain = train_transforms(SIZE, registry)
    chain.set_random_state(seed=3)
    source = samples[(task, dataset)]
    seen = set()
    for _ in range(24):
        out = chain(source)
        mode = DEFAULT_VOCABULARY.modes[int(out["mode_prompt"].argmax())]
        seen.add(mode)
        _check_sample(out, source, mode)
        assert not hasattr(out["image"], "meta")  # plain tensors for training
    assert seen == ({"whole", "local"} if task == "segmentation" else {"whole", "local", "location"})


def test_train_batches_mix_tasks_with_task_masked_targets(registry):
    data = m2us_samples(registry, "val")
    loader = DataLoader(Dataset(data[-6:] + data[:6], train_transforms(SIZE, registry)), batch_size=12)
    batch = next(iter(loader))
    assert batch["image"].shape == (12, 3, SIZE, SIZE) and batch["label"].shape == (12, 1, SIZE, SIZE)
    assert batch["task_id"].tolist() == [1] * 6 + [0] * 6
    assert batch["label"][:6].sum() == 0 and all(batch["label"][i].sum() > 0 for i in range(6, 12))
    assert batch["position_prompt"].shape == (12, 11) and batch["task_prompt"][:, 1].tolist() == [1.0] * 6 + [0.0] * 6
    assert len(batch["dataset"]) == 12


@pytest.mark.parametrize("geometry, min_dice", [("crop", 0.8), ("letterbox", 0.95), ("squash", 0.95)])
@pytest.mark.parametrize("mode", ["whole", "local"])
def test_invertd_maps_predictions_back_to_original_size(registry, samples, geometry, min_dice, mode):
    chain = val_transforms(SIZE, registry, mode=mode, geometry=geometry)
    source = samples[("segmentation", "BUSI")]
    truth = np.asarray(Image.open(source["label"])) > 0
    batch = next(iter(DataLoader(Dataset([source], chain), batch_size=1)))
    batch["pred"] = torch.nn.functional.one_hot(batch["label"][:, 0], 2).permute(0, 3, 1, 2).float()
    item = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)(decollate_batch(batch)[0])
    restored = item["pred"].argmax(0).numpy().astype(bool)
    assert restored.shape == truth.shape
    assert 2 * (restored & truth).sum() / (restored.sum() + truth.sum()) > min_dice


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_inference_chain_takes_prompts_by_name_with_per_image_override(samples, geometry):
    chain = inference_transforms(SIZE, organ="breast", object_type="tumor", geometry=geometry)
    image = samples[("segmentation", "TG3K")]["image"]
    out = chain({"image": image})
    assert set(out) == set(INFERENCE_KEYS) and out["image"].shape == (3, SIZE, SIZE)
    assert out["image"].meta["filename_or_obj"] == image
    assert torch.equal(out["position_prompt"], DEFAULT_VOCABULARY.one_hot("position", "breast"))
    assert torch.equal(out["mode_prompt"], DEFAULT_VOCABULARY.one_hot("mode", "whole"))
    override = chain({"image": image, "organ": "thyroid", "object_type": "organ", "mode": "local"})
    assert torch.equal(override["position_prompt"], DEFAULT_VOCABULARY.one_hot("position", "thyroid"))
    assert torch.equal(override["type_prompt"], DEFAULT_VOCABULARY.one_hot("type", "organ"))
    assert torch.equal(override["mode_prompt"], DEFAULT_VOCABULARY.one_hot("mode", "local"))
    assert torch.allclose(override["image"], out["image"])  # a user's local image is used as given


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"organ": "brain", "object_type": "tumor"}, "unknown position prompt 'brain'"),
        ({"organ": "breast", "object_type": "lesion"}, "unknown type prompt 'lesion'"),
        ({"organ": "breast", "object_type": "tumor", "task": "detection"}, "unknown task prompt 'detection'"),
        ({"organ": "breast", "object_type": "tumor", "mode": "zoom"}, "unknown mode.*'zoom'"),
        ({"organ": "breast", "object_type": "tumor", "geometry": "fit"}, "unknown geometry 'fit'"),
    ],
)
def test_inference_chain_refuses_unknown_names_before_reading(kwargs, message):
    with pytest.raises(ValueError, match=message):
        inference_transforms(SIZE, **kwargs)


def test_unknown_prompt_name_in_a_sample_names_the_image(samples):
    chain = inference_transforms(SIZE, organ="breast", object_type="tumor")
    image = samples[("segmentation", "TG3K")]["image"]
    with pytest.raises(RuntimeError) as info:
        chain({"image": image, "organ": "spleen"})
    assert "unknown position prompt 'spleen'" in str(info.value.__cause__) and image in str(info.value.__cause__)


def test_gain_contrast_option_changes_image_brightness_but_not_labels(registry, samples):
    source = samples[("segmentation", "TG3K")]
    official, augmented = train_transforms(SIZE, registry), train_transforms(SIZE, registry, gain_contrast=True)
    means = []
    for seed in range(12):
        official.set_random_state(seed=seed)
        augmented.set_random_state(seed=seed)
        plain, varied = official(source), augmented(source)
        assert torch.equal(plain["label"], varied["label"])  # same geometry draws; labels untouched
        assert 0.0 <= float(varied["image"].min()) and float(varied["image"].max()) <= 1.0
        means.append(float(varied["image"].mean() / plain["image"].mean()))
    assert min(means) < 0.95 and max(means) > 1.05


def _loaded_sample(registry, source: dict) -> dict:
    """A real sample through the deterministic head of the labelled chains (MetaTensors)."""
    for transform in load_transforms(registry):
        source = transform(source)
    return source


@pytest.mark.parametrize("dataset", ["BUSI", "TG3K"])
def test_training_resize_matches_the_invertible_one(registry, samples, dataset):
    """The training chain's torch resize gives MONAI's shapes and labels, and nearly its image."""
    source = _loaded_sample(registry, samples[("segmentation", dataset)])
    keys = ("image", "label")
    fast, traced = ShortSideInterpolated(keys, SIZE)(source), ShortSideResized(keys, SIZE)(source)
    assert min(fast["image"].shape[1:]) == SIZE
    assert fast["image"].shape == traced["image"].shape and fast["label"].shape == traced["label"].shape
    assert fast["label"].dtype == source["label"].dtype
    assert torch.equal(torch.as_tensor(fast["label"]), torch.as_tensor(traced["label"]).to(fast["label"].dtype))
    assert float((fast["image"] - torch.as_tensor(traced["image"])).abs().mean()) < 0.02


@pytest.mark.parametrize("dataset", ["BUSI", "Fetal_HC"])
def test_training_letterbox_matches_the_inference_letterbox(registry, samples, dataset):
    """Drawn, the training letterbox gives inference's geometry: its labels exactly, nearly its image."""
    source = _loaded_sample(registry, samples[("segmentation", dataset)])
    keys = ("image", "label")
    plain = {key: torch.as_tensor(source[key]).as_subclass(torch.Tensor) for key in keys}
    fast = RandLetterboxInterpolated(keys, SIZE, prob=1.0)(plain)
    traced = Compose(resize_to_square(keys, SIZE, "letterbox"))(source)
    assert fast["image"].shape == fast["label"].shape == (1, SIZE, SIZE)
    assert torch.equal(fast["label"], torch.as_tensor(traced["label"]).to(fast["label"].dtype))
    assert float((fast["image"] - torch.as_tensor(traced["image"])).abs().mean()) < 0.02


def test_training_letterbox_is_drawn_at_its_probability(registry, samples):
    """prob 0 is the shorter-side resize alone; prob 0.5 letterboxes about half of the draws."""
    keys = ("image", "label")
    plain = _resized_sample(registry, samples[("segmentation", "Fetal_HC")], resize=False)  # wider than high
    never = RandLetterboxInterpolated(keys, SIZE, prob=0.0)(plain)
    assert torch.equal(never["image"], ShortSideInterpolated(keys, SIZE)(plain)["image"])
    half = RandLetterboxInterpolated(keys, SIZE, prob=0.5)
    half.set_random_state(seed=0)
    letterboxed = sum(half(plain)["image"].shape[-1] == SIZE for _ in range(200))
    assert 70 <= letterboxed <= 130
    with pytest.raises(ValueError, match=r"letterbox_prob \(the share of letterboxed samples\) must be in \[0, 1\], got"):
        RandLetterboxInterpolated(keys, SIZE, prob=1.5)


def test_letterbox_prob_reaches_the_training_chain(registry):
    """0 keeps the official chain's resize; a share puts the letterbox draw in its place."""
    kinds = {prob: [type(t) for t in train_transforms(SIZE, registry, letterbox_prob=prob).transforms] for prob in (0, 0.5)}
    assert ShortSideInterpolated in kinds[0] and RandLetterboxInterpolated not in kinds[0]
    assert RandLetterboxInterpolated in kinds[0.5] and ShortSideInterpolated not in kinds[0.5]
    with pytest.raises(ValueError, match=r"letterbox_prob \(the share of letterboxed samples\) must be in \[0, 1\], got"):
        train_transforms(SIZE, registry, letterbox_prob=-0.5)


def _resized_sample(registry, source: dict, resize: bool = True) -> dict:
    """A real sample loaded, as plain tensors, shorter side SIZE (the cascade's input) unless not ``resize``."""
    source = _loaded_sample(registry, source)
    plain = {key: torch.as_tensor(source[key]).as_subclass(torch.Tensor) for key in ("image", "label")}
    return ShortSideInterpolated(("image", "label"), SIZE)(plain) if resize else plain


CASCADE_REFERENCES = [  # (branch, amount, MONAI transform it replaces, least label Dice)
    ("none", 0.0, None, 1.0),
    ("flip", 0.0, Flipd(("image", "label"), spatial_axis=1), 1.0),
    ("rotate", 0.3, Rotated(("image", "label"), 0.3, mode=("bilinear", "nearest"), padding_mode="zeros"), 1.0),
    ("rotate", -0.2, Rotated(("image", "label"), -0.2, mode=("bilinear", "nearest"), padding_mode="zeros"), 1.0),
    # MONAI's Zoom resizes to a whole number of pixels, then pads or crops: up to ~1 px apart
    ("zoom", 0.85, Zoomd(("image", "label"), 0.85, mode=("bilinear", "nearest-exact"), padding_mode="constant"), 0.9),
    ("zoom", 1.15, Zoomd(("image", "label"), 1.15, mode=("bilinear", "nearest-exact"), padding_mode="constant"), 0.9),
]


@pytest.mark.parametrize("dataset", ["BUSI", "Fetal_HC"])
@pytest.mark.parametrize("branch, amount, reference, least_dice", CASCADE_REFERENCES)
def test_official_cascade_matches_the_monai_transforms(registry, samples, dataset, branch, amount, reference, least_dice):
    resized = _resized_sample(registry, samples[("segmentation", dataset)])
    out = RandOfficialCascaded(("image", "label"), SIZE).apply(resized, branch, amount)
    expected = CenterSpatialCropd(("image", "label"), (SIZE, SIZE))(reference(dict(resized)) if reference else resized)
    assert out["image"].shape == (1, SIZE, SIZE) and out["label"].shape == (1, SIZE, SIZE)
    ours, theirs = out["label"] > 0, torch.as_tensor(expected["label"]) > 0
    dice = 2 * float((ours & theirs).sum()) / max(float(ours.sum() + theirs.sum()), 1.0)
    assert dice >= least_dice - 1e-6
    image_gap = float((out["image"] - torch.as_tensor(expected["image"])).abs().mean())
    assert image_gap < (1e-5 if least_dice == 1.0 else 0.05)


@pytest.mark.parametrize(
    "options, expected, zoom",
    [
        ({}, {"flip": 2000, "rotate": 1000, "zoom": 500, "none": 500}, (0.8, 1.2)),  # official
        ({"weights": {"flip": 0.25, "zoom": 0.75}, "zoom": [0.6, 1.4]}, {"flip": 1000, "rotate": 0, "zoom": 3000, "none": 0}, (0.6, 1.4)),
    ],
)
def test_cascade_draws_its_branches_with_their_weights(options, expected, zoom):
    cascade = RandOfficialCascaded(("image", "label"), SIZE, **options)
    cascade.set_random_state(seed=0)
    draws = {"flip": 0, "rotate": 0, "zoom": 0, "none": 0}
    for _ in range(4000):
        cascade.randomize()
        draws[cascade.branch] += 1
        if cascade.branch == "rotate":
            assert abs(cascade.amount) <= np.radians(20.0)
        if cascade.branch == "zoom":
            assert zoom[0] <= cascade.amount <= zoom[1]
    assert draws == pytest.approx(expected, abs=120)
    with pytest.raises(ValueError, match="unknown branch 'shear'"):
        cascade.apply({}, "shear")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"weights": {"flip": 0.5, "shear": 0.5}}, "augmentation weights must be over"),
        ({"weights": {"flip": 0.5}}, "sum to 1"),
        ({"zoom": [1.2, 0.8]}, "augmentation zoom must be"),
    ],
)
def test_cascade_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        RandOfficialCascaded(("image", "label"), SIZE, **options)


def test_augmentation_null_from_the_command_line_is_the_official_cascade(registry):
    for value in (None, {}, "null", "None"):
        chain = train_transforms(SIZE, registry, augmentation=value)
        cascade = next(t for t in chain.transforms if isinstance(t, RandOfficialCascaded))
        assert cascade.weights == {"flip": 0.5, "rotate": 0.25, "zoom": 0.125, "none": 0.125}
    with pytest.raises(ValueError, match="augmentation must be a mapping or null, got 'zoomy'"):
        train_transforms(SIZE, registry, augmentation="zoomy")


def test_mode_probabilities_null_from_the_command_line_is_the_official_draw(registry):
    for value in (None, "null", "official"):
        chain = train_transforms(SIZE, registry, mode_probabilities=value)
        mode = next(t for t in chain.transforms if isinstance(t, RandPromptModed))
        assert mode.probabilities == MODE_PROBABILITIES
    with pytest.raises(ValueError, match="mode_probabilities must be a mapping or null, got 'whole'"):
        train_transforms(SIZE, registry, mode_probabilities="whole")
