"""Self-supervised pretraining: the masked student, the loss terms, the masking and its schedules,
the image pool, and configs/ssl_pretrain.yaml end to end through ``python -m monai.bundle run``
(an encoder checkpoint that starts pretrain.yaml, resume, gloo x 2)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from bundle.data.unlabelled import unlabelled_samples
from bundle.networks import read_checkpoint
from bundle.networks.masked_student import (
    MaskedStudent,
    PerceptGuideEncoder,
    image_to_units,
    units_to_image,
)
from bundle.transforms.views import two_view_transforms
from bundle.workflows.masking import (
    AdaptiveMasker,
    choose_mask,
    cosine_ramp,
    masked_count,
    teacher_saliency,
)
from bundle.workflows.ssl import (
    SelfSupervisedLoss,
    ema_update,
    frozen_copy,
    normalised_units,
)
from tests.bundle_runner import (
    DEMO_DIR,
    REPO_ROOT,
    config_list,
    run_bundle,
    subprocess_env,
    write_small_datalist,
)
from tests.conftest import TINY_SIZE, tiny_network
from tests.ultrasound_dicom import write_dicom

ENCODER_GROUPS = ("patch_embed.", "encoder.", "encoder_norm.")
TERMS = ("recon", "distill", "global")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ssl")


@pytest.fixture(scope="module")
def pool(workdir) -> Path:
    """Eight demo images at three folder depths (PNG, one as DICOM, one as NIfTI) and a corrupt PNG."""
    pool = workdir / "pool"
    (pool / "thyroid" / "video").mkdir(parents=True)
    for dataset, count in (("BUSI", 3), ("Fetal_HC", 3)):
        for source in sorted((DEMO_DIR / "segmentation" / dataset / "imgs").glob("*.png"))[:count]:
            shutil.copy(source, pool)
    thyroid = sorted((DEMO_DIR / "segmentation" / "TG3K" / "imgs").glob("*.png"))[:2]
    write_dicom(pool / "thyroid" / "frame0.dcm", np.array(Image.open(thyroid[0]).convert("L")))
    nib.save(nib.Nifti1Image(np.array(Image.open(thyroid[1]).convert("L")), np.eye(4)), pool / "thyroid" / "video" / "frame1.nii.gz")
    (pool / "thyroid" / "corrupt.png").write_bytes(b"\x89PNG but truncated")
    return pool


def ssl_overrides(pool: Path, out: Path, runs: Path, **extra) -> dict:
    return {"unlabelled_dirs": repr([str(pool)]), "ckpt_dir": out, "output_dir": runs, **extra}


@pytest.fixture(scope="module")
def ssl_run(workdir, pool) -> tuple[Path, str]:
    """The issue's command with the CPU setting (tiny sizes on top): one epoch; its encoder and log."""
    out = workdir / "out"
    result = run_bundle("ssl_pretrain", "cpu", overrides=ssl_overrides(pool, out, workdir / "runs", epochs=1))
    return out, result.stdout + result.stderr


# --- the student and the teacher -------------------------------------------------------------


@pytest.mark.parametrize("patch_embed", ["linear", "conv"])
def test_encoder_has_perceptguides_own_modules_and_state_dict_keys(patch_embed):
    network = tiny_network(patch_embed=patch_embed)
    encoder = PerceptGuideEncoder(network)
    own = {key: value for key, value in network.state_dict().items() if key.startswith(ENCODER_GROUPS)}
    assert encoder.state_dict().keys() == own.keys()
    assert encoder.patch_embed is network.patch_embed and encoder.encoder is network.encoder
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    assert encoder.eval()(image).shape == (2, 2, 2, 96)  # 64 px / 32-px units, width 12 * 2^3


@pytest.mark.parametrize("heads", [TERMS, ("recon",), ("distill", "global")])
def test_student_builds_only_the_heads_of_its_terms_and_masks_patch_tokens(heads, one_thread):
    student = MaskedStudent(tiny_network(), heads=heads).eval()
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    visible = torch.zeros(2, 2, 2, dtype=torch.bool)
    with torch.no_grad():
        outputs = student(image, visible)
        masked = student(image, visible | torch.tensor([[True, False], [False, False]]))
    shapes = {"recon": (2, 2, 2, 3 * 32 * 32), "distill": (2, 2, 2, 96), "global": (2, 96)}
    assert {key: tuple(value.shape) for key, value in outputs.items()} == {head: shapes[head] for head in heads}
    assert {name.split("_head")[0] for name, _ in student.named_parameters() if "_head" in name} == set(heads)
    # nothing masked: the plain encoder; one unit masked changes the features
    first = next(iter(outputs))
    assert not torch.equal(outputs[first], masked[first])
    if "distill" in heads:
        with torch.no_grad():
            torch.testing.assert_close(outputs["distill"], student.distill_head(student.encoder(image)))


def test_a_mask_that_does_not_fit_the_units_is_refused():
    student = MaskedStudent(tiny_network())
    with pytest.raises(ValueError, match="does not fit the 32-pixel units"):
        student(torch.rand(1, 3, TINY_SIZE, TINY_SIZE), torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiples of 64"):
        student(torch.rand(1, 3, 96, 96), torch.zeros(1, 3, 3, dtype=torch.bool))


def test_units_round_trip_and_normalised_targets():
    image = torch.rand(2, 3, 16, 24)
    units = image_to_units(image, 8)
    assert units.shape == (2, 2, 3, 3 * 64)
    assert torch.equal(units_to_image(units, 3), image)
    assert torch.equal(units[0, 1, 2].reshape(3, 8, 8), image[0, :, 8:16, 16:24])
    target = normalised_units(image, 8)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(-1, unbiased=False), torch.ones(2, 2, 3), atol=1e-3, rtol=0)


def test_ema_update_moves_the_teacher_by_one_minus_momentum_and_copies_batch_norm_statistics():
    student = PerceptGuideEncoder(tiny_network(patch_embed="conv"))
    teacher = frozen_copy(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(1.0)
        student.train()(torch.rand(2, 3, TINY_SIZE, TINY_SIZE))  # new batch-norm statistics
    ema_update(teacher, student, momentum=0.75)
    for name, parameter in teacher.named_parameters():
        torch.testing.assert_close(parameter, before[name] + 0.25)
    for name, buffer in student.named_buffers():
        if name.endswith("running_mean"):
            assert torch.equal(teacher.get_buffer(name), buffer)
    ema_update(teacher, student, momentum=0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))


# --- the loss terms ----------------------------------------------------------------------------


def loss_inputs(seed: int = 0) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    outputs = {"recon": torch.randn(2, 2, 2, 3 * 64), "distill": torch.randn(2, 2, 2, 8), "global": torch.randn(2, 8)}
    mask = torch.tensor([[[True, False], [False, True]], [[False, False], [True, False]]])
    targets = {"image": torch.rand(2, 3, 16, 16), "mask": mask, "teacher": torch.randn(2, 2, 2, 8), "teacher_global": torch.randn(2, 8)}
    return outputs, targets


def test_each_term_is_its_formula_over_the_masked_units():
    outputs, targets = loss_inputs()
    mask = targets["mask"]
    losses = SelfSupervisedLoss(recon_weight=2.0, distill_weight=0.5, global_weight=3.0)(outputs, targets)
    error = (outputs["recon"] - normalised_units(targets["image"], 8)).pow(2).mean(-1)
    cosine = torch.nn.functional.cosine_similarity
    teacher = targets["teacher"] - targets["teacher"].mean(dim=(0, 1, 2))  # centred on the batch
    pooled = targets["teacher_global"] - targets["teacher_global"].mean(dim=0)
    expected = {
        "recon": error[mask].mean(),
        "distill": (1 - cosine(outputs["distill"], teacher, dim=-1))[mask].mean(),
        "global": (1 - cosine(outputs["global"], pooled, dim=-1)).mean(),
    }
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value)
    torch.testing.assert_close(losses["loss"], 2.0 * expected["recon"] + 0.5 * expected["distill"] + 3.0 * expected["global"])
    torch.testing.assert_close(losses["recon_error"], error)
    # a perfect reconstruction of the masked units costs nothing, whatever the visible ones hold
    perfect = normalised_units(targets["image"], 8).masked_fill(~mask[..., None], 7.0)
    assert SelfSupervisedLoss(1, 0, 0)({"recon": perfect}, targets)["loss"] == 0


@pytest.mark.parametrize("off", TERMS)
def test_a_zero_weight_removes_its_term(off):
    weights = {f"{name}_weight": 0.0 if name == off else 1.0 for name in TERMS}
    loss = SelfSupervisedLoss(**weights)
    assert loss.terms == tuple(name for name in TERMS if name != off)
    outputs, targets = loss_inputs()
    losses = loss(outputs, targets)
    assert off not in losses and ("recon_error" in losses) == (off != "recon")
    torch.testing.assert_close(losses["loss"], sum(losses[name] for name in loss.terms))
    # neither the term's output nor its target is read: missing, they change nothing
    key = {"recon": None, "distill": "teacher", "global": "teacher_global"}[off]
    trimmed = {k: v for k, v in outputs.items() if k != off}
    assert torch.equal(loss(trimmed, {k: v for k, v in targets.items() if k != key})["loss"], losses["loss"])


def test_all_weights_zero_or_a_negative_weight_is_refused():
    with pytest.raises(ValueError, match="all 0"):
        SelfSupervisedLoss(0, 0, 0)
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        SelfSupervisedLoss(1, -1, 1)


# --- masking and the schedules -----------------------------------------------------------------


@pytest.mark.parametrize("grid, ratio, count", [((2, 2), 0.6, 2), ((3, 3), 0.6, 5), ((7, 7), 0.6, 29), ((2, 2), 0.1, 1), ((2, 2), 0.95, 3)])
def test_every_image_gets_the_ratio_of_its_units_masked(grid, ratio, count):
    assert masked_count(grid[0] * grid[1], ratio) == count
    scores = torch.rand(6, *grid)
    for mask in (choose_mask(6, grid, ratio), choose_mask(6, grid, ratio, scores, share=0.5)):
        assert mask.shape == (6, *grid) and mask.dtype == torch.bool
        assert mask.flatten(1).sum(1).tolist() == [count] * 6
    draws = choose_mask(200, grid, ratio)
    assert draws.any(dim=0).all() and (~draws).any(dim=0).all()  # random masks: every unit masked in some


def test_the_guided_share_of_masked_units_are_the_top_scored_ones():
    scores = torch.rand(4, 7, 7)
    top = scores.flatten(1).argsort(dim=1, descending=True)
    full = choose_mask(4, (7, 7), 0.6, scores, share=1.0).flatten(1)
    for image in range(4):
        assert set(full[image].nonzero().flatten().tolist()) == set(top[image, :29].tolist())
    half = choose_mask(4, (7, 7), 0.6, scores, share=0.5).flatten(1)
    for image in range(4):
        assert half[image, top[image, :14]].all()  # round(0.5 * 29) = 14 units by score, the rest random


def test_adaptive_schedule_rises_from_start_to_end_over_training():
    masker = AdaptiveMasker()
    steps = [masker.schedule(p) for p in (0.0, 0.25, 0.5, 1.0)]
    assert [s["saliency_weight"] for s in steps] == pytest.approx([0.1, 0.3, 0.5, 0.9])
    assert [s["guided_share"] for s in steps] == pytest.approx([0.1, 0.3, 0.5, 0.9])
    assert AdaptiveMasker(adaptive="false").schedule(0.5) == {"saliency_weight": 0.0, "guided_share": 0.0}
    momentum = [cosine_ramp((0.99, 0.996), p) for p in (0.0, 0.5, 1.0)]
    assert momentum == pytest.approx([0.99, 0.993, 0.996])
    with pytest.raises(ValueError, match="guided_share must be"):
        AdaptiveMasker(guided_share=[0.1, 1.5])


def unit_range(scores: torch.Tensor) -> torch.Tensor:
    low, high = scores.amin((1, 2), keepdim=True), scores.amax((1, 2), keepdim=True)
    return (scores - low) / (high - low)


def test_scores_weigh_teacher_saliency_by_alpha_and_the_recorded_error_by_one_minus_alpha():
    masker = AdaptiveMasker()
    saliency = teacher_saliency(torch.randn(3, 2, 2, 8))
    torch.testing.assert_close(saliency.flatten(1).sum(1), torch.ones(3))
    assert torch.equal(masker.scores(saliency, 0.0), masker.scores(saliency, 1.0))  # no error recorded yet: saliency only
    error = torch.tensor([[[4.0, 0.0], [1.0, 9.0]]]).expand(3, 2, 2)
    masked = torch.tensor([[[True, False], [True, True]]]).expand(3, 2, 2)
    masker.record(error, masked)
    torch.testing.assert_close(masker.error, torch.tensor([[4.0, 14 / 3], [1.0, 9.0]]))  # never masked: the others' mean
    for progress, alpha in ((0.0, 0.1), (1.0, 0.9)):
        expected = alpha * unit_range(saliency) + (1 - alpha) * unit_range(masker.error.expand(3, 2, 2))
        torch.testing.assert_close(masker.scores(saliency, progress), expected)
    restored = AdaptiveMasker()
    restored.load_state_dict(masker.state_dict())
    assert torch.equal(restored.error, masker.error)


# --- the image pool and its views --------------------------------------------------------------


def test_pool_lists_every_image_at_any_depth_once_and_refuses_empty_or_missing_folders(pool, tmp_path):
    samples = unlabelled_samples([pool, pool / "thyroid"])
    names = sorted(Path(s["image"]).name for s in samples)
    assert len(names) == 9 and "frame1.nii.gz" in names and "frame0.dcm" in names and "corrupt.png" in names
    assert unlabelled_samples(str(pool)) == unlabelled_samples([pool])
    assert unlabelled_samples([{"dir": str(pool), "organ": "thyroid", "object_type": "organ"}]) == unlabelled_samples([pool])
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no image here")
    with pytest.raises(ValueError, match=f"no image files .* under {empty}"):
        unlabelled_samples([pool, empty])
    with pytest.raises(FileNotFoundError, match="input folder not found: /nonexistent/pool"):
        unlabelled_samples(["/nonexistent/pool"])
    with pytest.raises(ValueError, match="unlabelled_dirs is empty"):
        unlabelled_samples([])


def test_two_view_transforms_give_two_independent_square_views_as_plain_tensors(pool):
    transform = two_view_transforms(64, gain_contrast=True, augmentation={"weights": {"rotate": 1.0}})
    transform.set_random_state(0)
    sample = transform({"image": str(pool / "thyroid" / "frame0.dcm")})
    assert set(sample) == {"image", "view"}
    for view in sample.values():
        assert view.shape == (3, 64, 64) and view.dtype == torch.float32 and not isinstance(view, MetaTensor)
        assert 0 <= view.min() and view.max() <= 1
    assert not torch.equal(sample["image"], sample["view"])


# --- the stage end to end ----------------------------------------------------------------------


def test_ssl_pretrain_writes_one_encoder_checkpoint_and_names_each_unreadable_file_once(ssl_run, workdir, pool):
    out, log = ssl_run
    assert [path.name for path in out.glob("*.pt")] == ["ssl_encoder.pt"]
    checkpoint = read_checkpoint(out / "ssl_encoder.pt")
    assert checkpoint.description.content == "encoder" and checkpoint.description.image_size == TINY_SIZE
    assert checkpoint.description.arguments["patch_embed"] == "conv"  # cpu.yaml's network
    assert {key.split(".")[0] + "." for key in checkpoint.state_dict} == set(ENCODER_GROUPS)
    named = [line for line in log.splitlines() if str(pool / "thyroid" / "corrupt.png") in line]
    assert len(named) == 1 and "skipping" in named[0]
    assert "1 of 9 images could not be read and are skipped" in log
    assert re.search(r"distill: [\d.]+ global: [\d.]+ .*recon: [\d.]+", log)
    with pytest.raises(ValueError, match="holds only an encoder"):
        checkpoint.build()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for events in (workdir / "runs").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for kind, names in accumulator.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, set()).update(names)
    assert {"loss", "recon", "distill", "global", "guided_share", "teacher_momentum"} <= tags["scalars"]
    assert {"input_0_HW_0", "input_1_HW_0", "output_HW_0"} <= tags["images"]


def test_pretrain_trains_from_the_ssl_encoder_and_says_how_many_tensors_loaded(ssl_run, workdir):
    out, _ = ssl_run
    encoder = out / "ssl_encoder.pt"
    datalist = write_small_datalist(workdir / "datalist.json", {"training": 4, "validation": 2, "test": 2})
    overrides = {"datalist": datalist, "init_ckpt": encoder, "epochs": 1, "val_interval": 2, "ckpt_dir": workdir / "d2", "output_dir": workdir / "d3"}
    result = run_bundle("pretrain", "cpu", overrides=overrides)
    log = result.stdout + result.stderr
    tensors = len(read_checkpoint(encoder).state_dict)
    found = re.search(rf"init_ckpt {re.escape(str(encoder))}: loaded {tensors} of \d+ tensors; left at their initial values: (.*)", log)
    untouched = set(found[1].split(", ")) if found else set()
    # the decoders (and the CPU setting's convolutional skip path) start fresh, nothing of the encoder does
    assert {"cls_decoder", "seg_decoder"} <= untouched and not any(g.startswith(("encoder", "patch_embed")) for g in untouched)
    model = read_checkpoint(workdir / "d2" / "model.pt")
    assert model.description.content == "model" and set(read_checkpoint(encoder).state_dict) < set(model.state_dict)


def test_ssl_pretrain_resumes_from_the_last_epoch(ssl_run, workdir, pool):
    out, _ = ssl_run
    state = workdir / "runs" / "training_state" / "checkpoint_1.pt"
    assert {"model", "teacher", "optimizer", "lr_scheduler", "masker", "trainer", "description"} <= set(torch.load(state, weights_only=True))
    result = run_bundle("ssl_pretrain", "cpu", overrides=ssl_overrides(pool, out, workdir / "runs", epochs=2, resume="true"))
    log = result.stdout + result.stderr
    assert f"Restored all variables from {state}" in log
    assert "Epoch[2] Complete" in log and "Epoch[1] Complete" not in log
    final = torch.load(workdir / "runs" / "training_state" / "checkpoint_2.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 2 * final["trainer"]["epoch_length"]


def test_multi_gpu_override_trains_with_two_gloo_processes(workdir, pool):
    out = workdir / "ddp_out"
    args = ["--config_file", config_list("ssl_pretrain", "multi_gpu_ssl_pretrain"), "--logging_file", "configs/logging.conf"]
    for key, value in ssl_overrides(pool, out, workdir / "ddp_runs").items():
        args += [f"--{key}", str(value)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", *args]
    result = subprocess.run(command, check=False, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [path.name for path in out.glob("*.pt")] == ["ssl_encoder.pt"]
    assert not any(key.startswith("module.") for key in read_checkpoint(out / "ssl_encoder.pt").state_dict)
    state = torch.load(workdir / "ddp_runs" / "training_state" / "checkpoint_1.pt", weights_only=True)
    assert state["trainer"]["epoch_length"] == 1  # 8 images, 4 per rank: one batch of 4 each
    assert not any(key.startswith("module.") for key in state["model"])
