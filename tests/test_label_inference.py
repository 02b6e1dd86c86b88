"""apps/monailabel/lib/inference.py: one image through configs/inference.yaml, as the Label server runs it.

In-process, on real untrained checkpoints of the tiny network (written by the tests: the
checkpoint alone says what to build) and real demo images; the HTTP side is in
test_label_server.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.measure
from PIL import Image

from apps.monailabel.lib.inference import BundleInference, RequestError
from bundle.prompts import DEFAULT_VOCABULARY
from tests.conftest import REPO_ROOT
from tests.label_support import head_images, served_checkpoint
from tests.ultrasound_dicom import write_dicom

IMAGE = head_images(1)[0]
CLASS_NAMES = ["benign", "malignant"]
# strong prompt projections, so that prompts visibly change an untrained network's output
PROMPT_SCALE = 500.0


def serve(path: Path, seed: int = 0, **names) -> BundleInference:
    model = served_checkpoint(path, seed, prompt_scale=PROMPT_SCALE, cls_classes=CLASS_NAMES, **names)
    return BundleInference(REPO_ROOT, model, device="cpu", defaults={"organ": "head", "object_type": "organ"})


@pytest.fixture(scope="module")
def inference(tmp_path_factory) -> BundleInference:
    return serve(tmp_path_factory.mktemp("model") / "model.pt")


def image_of_kind(kind: str, folder: Path) -> Path:
    """The demo image as a PNG, or as an ultrasound DICOM file (gray, or RGB stored as YBR)."""
    if kind == "png":
        return IMAGE
    gray = np.asarray(Image.open(IMAGE).convert("L"))
    if kind == "dicom-gray":
        return write_dicom(folder / f"{IMAGE.stem}.dcm", gray)
    return write_dicom(folder / f"{IMAGE.stem}.dcm", np.repeat(gray[..., None], 3, axis=-1), "YBR_FULL")


@pytest.mark.parametrize("kind", ["png", "dicom-gray", "dicom-ybr"])
def test_predict_writes_a_mask_of_the_image_size_and_probabilities_by_the_checkpoints_class_names(inference, tmp_path, kind):
    prediction = inference.predict(image_of_kind(kind, tmp_path), {}, tmp_path / "work")
    mask = np.asarray(Image.open(prediction.mask))
    assert mask.shape == np.asarray(Image.open(IMAGE)).shape[:2]
    assert set(np.unique(mask)) <= {0, 255}
    assert prediction.foreground_pixels == int((mask > 0).sum())
    assert list(prediction.probabilities) == CLASS_NAMES
    assert prediction.prompts == {"organ": "head", "object_type": "organ", "mode": "whole"}


def head_server(inference: BundleInference, **options) -> BundleInference:
    """Another server of the same checkpoint, fetal head by default, with app ``options`` (postprocessing, runtime)."""
    return BundleInference(
        REPO_ROOT, inference.model_path, device="cpu", defaults={"organ": "head", "object_type": "organ"}, **options
    )


def test_served_masks_are_cleaned_up_as_inference_yaml_says_unless_the_app_switches_it_off(inference, tmp_path):
    """Default: one component, no holes; switched off: the raw argmax of the same untrained network."""
    components = lambda prediction: skimage.measure.label(np.asarray(Image.open(prediction.mask)) > 0).max()  # noqa: E731
    cleaned = inference.predict(IMAGE, {}, tmp_path / "cleaned")
    raw_server = head_server(inference, postprocessing={"keep_largest_component": "false", "fill_holes": "false"})
    raw = raw_server.predict(IMAGE, {}, tmp_path / "raw")
    assert components(cleaned) == 1 < components(raw)
    with pytest.raises(ValueError, match="unknown post-processing switches"):
        BundleInference(REPO_ROOT, inference.model_path, device="cpu", postprocessing={"smooth": "true"})


def test_the_app_serves_through_onnxruntime_when_asked_with_the_same_masks(inference, tmp_path):
    pytest.importorskip("onnxruntime")
    eager = inference.predict(IMAGE, {}, tmp_path / "eager")
    served = head_server(inference, runtime={"backend": "onnxruntime", "num_threads": "1"})
    exported = served.predict(IMAGE, {}, tmp_path / "exported")
    assert np.array_equal(np.asarray(Image.open(eager.mask)), np.asarray(Image.open(exported.mask)))
    assert exported.probabilities == pytest.approx(eager.probabilities, abs=1e-4)
    with pytest.raises(ValueError, match="unknown runtime options"):
        BundleInference(REPO_ROOT, inference.model_path, device="cpu", runtime={"engine": "tvm"})


def test_the_app_lets_onnx_runtime_threads_spin_only_when_asked(inference):
    pytest.importorskip("onnxruntime")
    for text, entry in (("true", "1"), ("False", "0")):
        served = head_server(inference, runtime={"backend": "onnxruntime", "num_threads": "1", "onnx_spinning": text})
        options = served._current().network.sessions(1).get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
    with pytest.raises(ValueError, match="onnx_spinning must be true or false"):
        head_server(inference, runtime={"onnx_spinning": "maybe"})


def test_the_app_averages_the_mirrored_view_only_when_asked(inference, tmp_path):
    """The untrained network is not mirror-symmetric: the flip changes its class probabilities."""
    plain = inference.predict(IMAGE, {}, tmp_path / "plain")
    flipped = head_server(inference, runtime={"test_time_flip": "true"}).predict(IMAGE, {}, tmp_path / "flipped")
    assert flipped.probabilities != pytest.approx(plain.probabilities, abs=1e-6)
    with pytest.raises(ValueError, match="test_time_flip must be true or false"):
        head_server(inference, runtime={"test_time_flip": "sometimes"})


def test_request_prompts_override_the_defaults_and_change_the_output(inference, tmp_path):
    head = inference.predict(IMAGE, {}, tmp_path / "a")
    breast = inference.predict(IMAGE, {"organ": "breast", "object_type": "tumor"}, tmp_path / "b")
    assert breast.prompts == {"organ": "breast", "object_type": "tumor", "mode": "whole"}
    assert head.probabilities != breast.probabilities
    assert not np.array_equal(np.asarray(Image.open(head.mask)), np.asarray(Image.open(breast.mask)))


@pytest.mark.parametrize(
    "params, allowed",
    [({"organ": "spleen"}, "'breast'"), ({"object_type": "bone"}, "'tumor'"), ({"mode": "zoomed"}, "'location'")],
    ids=["organ", "object_type", "mode"],
)
def test_an_unknown_prompt_name_is_a_422_listing_the_allowed_names(inference, tmp_path, params, allowed):
    (name, value), = params.items()
    with pytest.raises(RequestError, match=f"{name} '{value}' is not in the vocabulary .*{allowed}") as err:
        inference.predict(IMAGE, params, tmp_path)
    assert err.value.status == 422


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\nnot really"], ids=["empty", "truncated"])
def test_an_unreadable_image_is_a_422_naming_the_file(inference, tmp_path, content):
    broken = tmp_path / "broken.png"
    broken.write_bytes(content)
    with pytest.raises(RequestError, match="cannot read image broken.png") as err:
        inference.predict(broken, {}, tmp_path / "work")
    assert err.value.status == 422


def test_a_default_prompt_outside_the_vocabulary_fails_at_start(tmp_path):
    model = served_checkpoint(tmp_path / "model.pt")
    with pytest.raises(RequestError, match="organ 'spleen' is not in the vocabulary"):
        BundleInference(REPO_ROOT, model, device="cpu", defaults={"organ": "spleen"})


def test_a_model_with_an_extra_organ_and_three_classes_serves_from_its_checkpoint_alone(tmp_path):
    vocabulary = DEFAULT_VOCABULARY.extended(["spleen"])
    model = served_checkpoint(
        tmp_path / "model.pt",
        prompt_scale=PROMPT_SCALE,
        network_options={"seg_classes": 3, "cls_classes": 3, "prompt_sizes": vocabulary.sizes},
        vocabulary=vocabulary,
        seg_classes=["background", "cyst", "solid"],
        cls_classes=["normal", "benign", "malignant"],
    )
    inference = BundleInference(REPO_ROOT, model, device="cpu", defaults={"organ": "spleen"})
    assert "spleen" in inference.allowed("organ") and inference.seg_classes == ["background", "cyst", "solid"]
    prediction = inference.predict(IMAGE, {}, tmp_path / "work")
    mask = np.asarray(Image.open(prediction.mask))
    assert mask.shape == np.asarray(Image.open(IMAGE)).shape[:2]
    assert set(np.unique(mask)) <= {0, 1, 2} and mask.max() > 0
    assert list(prediction.probabilities) == ["normal", "benign", "malignant"]
    assert prediction.prompts["organ"] == "spleen"


def test_a_replaced_checkpoint_is_served_by_the_next_request(tmp_path):
    inference = serve(tmp_path / "model.pt")
    first = inference.predict(IMAGE, {}, tmp_path / "a")
    served_checkpoint(tmp_path / "new.pt", seed=1, prompt_scale=PROMPT_SCALE, cls_classes=CLASS_NAMES)
    os.replace(tmp_path / "new.pt", inference.model_path)
    second = inference.predict(IMAGE, {}, tmp_path / "b")
    assert second.weights != first.weights
    assert second.probabilities != first.probabilities
