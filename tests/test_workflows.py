"""Every stage config run end to end through ``python -m monai.bundle`` on the shipped demo data."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.measure
import torch
from PIL import Image

from monai.bundle import ConfigParser
from monai.transforms import Compose, RandAdjustContrastd

from bundle.networks import PromptedSegmenter, load_model, read_checkpoint
from bundle.transforms import RandLetterboxInterpolated, RandOfficialCascaded
from tests.bundle_runner import (
    DEMO_DIR, REPO_ROOT, bare_inference, bundle_command, config_list, run_bundle, subprocess_env, write_small_datalist,
)  # fmt: skip
from tests.conftest import TINY_NET, tiny_network
from tests.ultrasound_dicom import write_dicom


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workflows")


@pytest.fixture(scope="module")
def datalist(workdir) -> Path:
    return write_small_datalist(workdir / "datalist.json", {"training": 4, "validation": 2, "test": 2})


@pytest.fixture(scope="module")
def pretrained(workdir, datalist) -> Path:
    """One tiny pretraining run; its outputs are checked below and reused by the other stages."""
    run_bundle(
        "pretrain",
        overrides={"datalist": datalist, "ckpt_dir": workdir / "models", "output_dir": workdir / "runs", "ema_momentum": 0.5},
    )
    return workdir / "models" / "model.pt"


def test_pretrain_writes_self_describing_best_and_resumable_checkpoints_and_tensorboard_events(pretrained, workdir):
    assert not (workdir / "models" / "model_best.pt").exists()  # model_selection: best writes model.pt only
    assert list((workdir / "runs").glob("events.out.tfevents.*"))
    checkpoint = read_checkpoint(pretrained)
    description = checkpoint.description
    assert {key: description.arguments[key] for key in TINY_NET} == {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_NET.items()}
    assert description.image_size == 64 and description.vocabulary["position"][:2] == ["ovary", "breast"]
    assert description.seg_classes == ["background", "tumor/head/thyroid"] and description.cls_classes == ["benign", "malignant"]
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # the file alone rebuilds the trained network
        expected = PromptedSegmenter(checkpoint.build(), organ="breast", object_type="tumor")(image)
        assert torch.equal(PromptedSegmenter(load_model(pretrained), organ="breast", object_type="tumor")(image), expected)
    resumable = torch.load(workdir / "models" / "checkpoint_1.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "description", "weight_average"} <= set(resumable)
    # ema_momentum > 0: the weights' moving average beside, self-describing, resumable with the rest
    average = read_checkpoint(workdir / "models" / "model_ema.pt")
    assert average.description.arguments == description.arguments
    state = resumable["weight_average"]
    assert state.keys() == resumable["model"].keys() and all(torch.equal(average.state_dict[k], state[k]) for k in state)
    assert not all(torch.equal(state[k], resumable["model"][k]) for k in state)


def test_pretrain_with_the_cpu_setting_runs_its_recipe(workdir, datalist):
    """configs/cpu.yaml (the demo's recipe: cosine decay, plain Dice, whole-heavy input modes, unit
    prompt init, convolution stem) runs through ``monai.bundle run``; tiny_model.yaml on top keeps it small."""
    ckpt_dir = workdir / "cpu_models"
    # validated at epoch 2 only, trained to epoch 3: the best-validated and the last weights differ
    overrides = {"datalist": datalist, "ckpt_dir": ckpt_dir, "output_dir": workdir / "cpu_runs", "epochs": 3, "val_interval": 2}
    run_bundle("pretrain", "cpu", overrides=overrides)
    resumable = torch.load(ckpt_dir / "checkpoint_3.pt", weights_only=False)
    iterations = resumable["trainer"]["epoch_length"]
    assert resumable["lr_scheduler"]["T_max"] == 3 * iterations  # cosine over the whole run
    weights = torch.load(ckpt_dir / "model.pt", weights_only=True)["model"]
    prompt_biases = [v for k, v in weights.items() if ".blocks." in k and ".prompt_proj." in k and k.endswith(".bias")]
    assert prompt_biases and all(torch.allclose(b, torch.ones_like(b), atol=0.05) for b in prompt_biases)  # unit
    assert any(key.startswith("patch_embed.convs.") for key in weights)  # the convolution stem
    assert any(key.startswith("conv_skips.") for key in weights)  # and the convolutional skip path
    # model.pt holds the weights at the end of training, the best-validated ones are model_best.pt
    last = resumable["model"]
    assert weights.keys() == last.keys() and all(torch.equal(weights[k], last[k]) for k in last)
    best = torch.load(ckpt_dir / "model_best.pt", weights_only=True)["model"]
    assert not all(torch.equal(best[k], last[k]) for k in last)
    # the checkpoint describes its network: evaluate.yaml needs no cpu.yaml
    eval_dir = workdir / "cpu_eval"
    run_bundle("evaluate", overrides={"datalist": datalist, "ckpt_path": ckpt_dir / "model.pt", "eval_dir": eval_dir})
    assert "**mean**" in (eval_dir / "metrics.md").read_text()


def parsed(files: list[str], item: str, **overrides) -> object:
    """Config item ``item`` of ``configs/<files>`` (later files win) with ``overrides``, in process."""
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / f) for f in files])
    parser.update({"bundle_root": str(REPO_ROOT), **overrides})
    return parser.get_parsed_content(item)


def test_cpu_setting_trains_with_its_augmentation():
    """cpu.yaml's gamma / gain and zoom-heavy cascade reach the training chain (pretrain.yaml alone: official)."""
    chains = {
        name: parsed(files, "train#preprocessing")
        for name, files in {"official": ["pretrain.yaml"], "cpu": ["pretrain.yaml", "cpu.yaml"]}.items()
    }
    for name, chain in chains.items():
        cascade = next(t for t in chain.transforms if isinstance(t, RandOfficialCascaded))
        gamma = [t for t in chain.transforms if isinstance(t, Compose) and isinstance(t.transforms[0], RandAdjustContrastd)]
        if name == "cpu":
            assert cascade.weights == {"flip": 0.25, "rotate": 0.25, "zoom": 0.5, "none": 0.0}
            assert cascade.zoom == (0.6, 1.4) and len(gamma) == 1
        else:
            assert cascade.weights == {"flip": 0.5, "rotate": 0.25, "zoom": 0.125, "none": 0.125}
            assert cascade.zoom == (0.8, 1.2) and not gamma


def test_shipped_recipe_letterboxes_half_its_samples_and_trains_through_monai_bundle_run(workdir, datalist):
    """configs/shipped.yaml over cpu.yaml: 96², 8-pixel tokens in three Swin stages, conv skips 32, 220
    epochs, the letterbox drawn for half the samples; one tiny epoch of the three files runs as ``make train-demo``
    runs them, the tiny network keeping the shipped layout (three stages, window 2 at 64²: unpadded)."""
    files = ["pretrain.yaml", "cpu.yaml", "shipped.yaml"]
    chain = parsed(files, "train#preprocessing")
    letterbox = next(t for t in chain.transforms if isinstance(t, RandLetterboxInterpolated))
    assert (letterbox.prob, letterbox.spatial_size) == (0.5, 96)
    network = parsed(files, "network_def")
    assert [network.arguments[key] for key in ("patch_size", "window_size", "encoder_depths")] == [8, 3, [2, 2, 2]]
    assert parsed(files, "epochs") == 220  # twice cpu.yaml's, as the model card's run
    ckpt_dir = workdir / "shipped_models"
    overrides = {"datalist": datalist, "ckpt_dir": ckpt_dir, "output_dir": workdir / "shipped_runs", "epochs": 1,
                 "network_def#encoder_depths": "[1,1,1]", "network_def#decoder_depths": "[1,1,1]"}  # fmt: skip
    run_bundle("pretrain", "cpu", "shipped", overrides=overrides)
    arguments = read_checkpoint(ckpt_dir / "model.pt").description.arguments
    assert (arguments["conv_skips"], arguments["patch_size"], arguments["num_heads"]) == (32, 8, [3, 6, 12])


@pytest.mark.parametrize(
    "files, overrides, expected",
    [
        (["pretrain.yaml"], {}, (0.4, 0.6, True)),  # official
        (["pretrain.yaml"], {"dice_background": "false"}, (0.4, 0.6, False)),  # as the command line passes it
        (["pretrain.yaml", "cpu.yaml"], {}, (0.2, 0.8, False)),
    ],
)
def test_loss_weights_and_background_dice_reach_the_loss(files, overrides, expected):
    seg_loss = parsed(files, "loss", **overrides).seg_loss
    assert (seg_loss.lambda_ce, seg_loss.lambda_dice, seg_loss.dice.include_background) == expected


def test_evaluate_writes_metric_tables_and_overlays(pretrained, workdir, datalist):
    eval_dir = workdir / "eval"
    run_bundle("evaluate", overrides={"datalist": datalist, "ckpt_path": pretrained, "eval_dir": eval_dir})
    rows = {row["dataset"]: row for row in csv.DictReader(open(eval_dir / "metrics.csv"))}
    assert set(rows) == {"BUSI", "Fetal_HC", "TG3K", "mean"}
    assert float(rows["TG3K"]["seg_n"]) == 2 and float(rows["BUSI"]["cls_n"]) == 2
    assert 0.0 <= float(rows["mean"]["dice"]) <= 1.0
    table = (eval_dir / "metrics.md").read_text()
    assert "| Fetal_HC |" in table and "**mean**" in table
    overlays = sorted(p.name for p in (eval_dir / "overlays").glob("*.png"))
    assert any(name.startswith("TG3K_best1") for name in overlays)
    assert any(name.startswith("TG3K_worst1") for name in overlays)


def test_inference_writes_original_size_masks_overlays_and_skips_unreadable_images(pretrained, workdir):
    input_dir = workdir / "inference_in"
    input_dir.mkdir()
    sources = sorted((DEMO_DIR / "segmentation" / "BUSI" / "imgs").glob("*.png"))[:2]
    sources += sorted((DEMO_DIR / "segmentation" / "Fetal_HC" / "imgs").glob("*.png"))[:1]
    for source in sources:
        shutil.copy(source, input_dir)
    (input_dir / "corrupt.png").write_bytes(b"not a png at all")
    output_dir = workdir / "inference_out"
    result = run_bundle(
        "inference",
        overrides={"input_dir": input_dir, "output_dir": output_dir, "ckpt_path": pretrained, "organ": "breast"},
    )
    log = result.stdout + result.stderr
    assert "skipping" in log and "corrupt.png" in log
    for source in sources:
        mask = np.array(Image.open(output_dir / source.name))
        assert mask.shape == np.array(Image.open(source)).shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert skimage.measure.label(mask > 0, connectivity=2).max() <= 1  # inference.yaml keeps the largest object
        assert (output_dir / f"{source.stem}_overlay.png").is_file()
    rows = list(csv.DictReader(open(output_dir / "predictions.csv")))
    assert [row["file"] for row in rows] == sorted(s.name for s in sources)
    for row in rows:  # the class columns are named by the checkpoint; the area is the written mask's
        assert {"p_benign", "p_malignant"} <= set(row)
        assert int(row["foreground_pixels"]) == int((np.array(Image.open(output_dir / row["file"])) > 0).sum())


@pytest.mark.parametrize("variant", ["sync", "finetune"])
def test_adaptation_overrides_start_from_the_checkpoint_and_train_what_they_say(variant, pretrained, workdir, datalist):
    out = workdir / variant
    run_bundle(
        "pretrain", variant,
        overrides={"datalist": datalist, "init_ckpt": pretrained, "ckpt_dir": out, "output_dir": workdir / f"{variant}_runs"},
    )  # fmt: skip
    before, after = read_checkpoint(pretrained), read_checkpoint(out / "model.pt")
    assert after.description == before.description
    changed = {key for key, value in before.state_dict.items() if not torch.equal(value, after.state_dict[key])}
    prompt_keys = {key for key in before.state_dict if ".prompt_proj." in key}
    if variant == "sync":
        assert changed and changed <= prompt_keys
    else:
        assert changed - prompt_keys


def test_ckpt_export_torchscript_matches_the_checkpoint(pretrained, workdir):
    exported = workdir / "model.ts"
    args = [
        "segmenter_def", "--filepath", str(exported), "--ckpt_file", str(pretrained), "--ckpt_path", str(pretrained),
        "--config_file", config_list("inference"), "--meta_file", "configs/metadata.json",
        "--key_in_ckpt", "model", "--use_trace", "True", "--input_shape", "[1, 3, 64, 64]",
    ]  # fmt: skip
    subprocess.run(bundle_command("ckpt_export", *args), cwd=REPO_ROOT, check=True, capture_output=True, env=subprocess_env())
    scripted = torch.jit.load(str(exported))
    eager = PromptedSegmenter(load_model(pretrained), organ="breast", object_type="tumor").eval()
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert (scripted(image) - eager(image)).abs().max() <= 1e-4


def test_resume_after_sigkill_continues_from_the_last_checkpoint(workdir, datalist):
    EPOCHS = 12  # tiny epochs (4 iterations): enough of them that the kill lands mid-run
    ckpt_dir = workdir / "resume_models"
    args = ["--config_file", config_list("pretrain"), "--logging_file", "configs/logging.conf",
            "--datalist", str(datalist), "--ckpt_dir", str(ckpt_dir),
            "--output_dir", str(workdir / "resume_runs"), "--epochs", str(EPOCHS), "--val_interval", str(EPOCHS)]  # fmt: skip
    process = subprocess.Popen(
        bundle_command("run", *args), cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while not list(ckpt_dir.glob("checkpoint_*.pt")):
            assert process.poll() is None, "pretraining ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    killed_at = int(next(ckpt_dir.glob("checkpoint_*.pt")).stem.split("_")[1])
    assert killed_at < EPOCHS, "the run finished before it could be killed"

    resumed = subprocess.run(
        bundle_command("run", *args, "--resume", "true"), cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True
    )
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    assert f"resuming from {ckpt_dir / f'checkpoint_{killed_at}.pt'}" in log
    assert f"Restored all variables from {ckpt_dir / f'checkpoint_{killed_at}.pt'}" in log
    completed = [epoch for epoch in range(1, EPOCHS + 1) if f"SupervisedTrainer - INFO - Epoch[{epoch}] Complete" in log]
    assert completed == list(range(killed_at + 1, EPOCHS + 1))
    final = torch.load(ckpt_dir / f"checkpoint_{EPOCHS}.pt", weights_only=True)
    total_iterations = EPOCHS * final["trainer"]["epoch_length"]
    assert final["trainer"]["iteration"] == total_iterations
    assert final["lr_scheduler"]["last_epoch"] == total_iterations  # per-iteration poly decay kept counting


def test_multi_gpu_override_trains_with_two_gloo_processes(workdir, datalist):
    ckpt_dir = workdir / "ddp_models"
    args = [
        "--config_file", config_list("pretrain", "multi_gpu_pretrain"), "--datalist", str(datalist),
        "--ckpt_dir", str(ckpt_dir), "--output_dir", str(workdir / "ddp_runs"),
    ]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", *args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (ckpt_dir / "model.pt").is_file() and (ckpt_dir / "checkpoint_1.pt").is_file()
    assert not any(key.startswith("module.") for key in read_checkpoint(ckpt_dir / "model.pt").state_dict)


@pytest.mark.parametrize(
    "stage, overrides, message",
    [
        ("pretrain", {"dataset_dir": "/nonexistent/demo"}, "dataset registry file not found: /nonexistent/demo/datasets.yaml"),
        ("inference", {"organ": "spleen"}, "organ 'spleen' is not in the vocabulary of checkpoint"),
        ("inference", {"image_size": 96}, "image_size 96 contradicts checkpoint"),
        ("inference", {"input_dir": "/nonexistent/images"}, "input folder not found: /nonexistent/images"),
        ("inference", {"ckpt_path": "/nonexistent/model.pt"}, "checkpoint not found: /nonexistent/model.pt"),
        ("pretrain", {"model_selection": "final"}, "model_selection must be one of ['best', 'last', 'ema'], got 'final'"),
        ("pretrain", {"augmentation": {"weights": {"shear": 1.0}}}, "augmentation weights must be over"),
        ("pretrain", {"resume": "maybe"}, "resume must be true or false, got 'maybe'"),
    ],
)
def test_bad_settings_stop_with_a_message_naming_the_cause(stage, overrides, message, tiny_checkpoint, tmp_path):
    # some settings fail after the engines made their output folders: keep those out of the repo
    outputs = {"ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "runs"}
    result = run_bundle(stage, overrides={"ckpt_path": tiny_checkpoint, **outputs, **overrides}, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_checkpoint_of_another_architecture_is_refused_naming_the_file(pretrained, workdir):
    wrong = workdir / "wider.pt"
    torch.save(tiny_network(embed_dim=24).state_dict(), wrong)  # a bare state dict: taken as the paper network
    result = run_bundle("inference", overrides={"ckpt_path": wrong, "output_dir": workdir / "never"}, check=False)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert f"checkpoint {wrong} does not fit PerceptGuide" in log and "shape mismatch" in log


def test_unreadable_training_image_stops_before_training_naming_the_file(workdir, datalist):
    import json

    content = json.loads(datalist.read_text())
    broken = workdir / "broken.png"
    broken.write_bytes(b"\x89PNG but truncated")
    content["training"][0]["image"] = str(broken)
    bad_list = workdir / "bad_datalist.json"
    bad_list.write_text(json.dumps(content))
    result = run_bundle("pretrain", overrides={"datalist": bad_list, "ckpt_dir": workdir / "never", "output_dir": workdir / "never_runs"}, check=False)
    assert result.returncode != 0
    assert f"cannot read image file {broken}" in result.stdout + result.stderr
    assert not (workdir / "never").exists()


def test_bare_inference_command_runs_a_cpu_setting_checkpoint(workdir, datalist):
    """A checkpoint trained with cpu.yaml (conv stem, unit prompts, 64² here) needs no config beside inference.yaml."""
    ckpt_dir = workdir / "cpu_bare_models"
    run_bundle("pretrain", "cpu", overrides={"datalist": datalist, "ckpt_dir": ckpt_dir, "output_dir": workdir / "cpu_bare_runs"})
    input_dir = workdir / "bare_in"
    input_dir.mkdir()
    sources = sorted((DEMO_DIR / "segmentation" / "Fetal_HC" / "imgs").glob("*.png"))[:2]
    for source in sources:
        shutil.copy(source, input_dir)
    bare_inference(input_dir, workdir / "bare_out", ckpt_dir / "model.pt", "head", "organ")
    for source in sources:
        assert np.array(Image.open(workdir / "bare_out" / source.name)).shape == np.array(Image.open(source)).shape[:2]


def write_three_class_dataset(root: Path) -> Path:
    """An M²-US dataset of a new organ (``nerve``) with two object classes (mask values 128, 255), and its registry."""
    dataset = root / "segmentation" / "NERVE"
    (dataset / "imgs").mkdir(parents=True)
    (dataset / "masks").mkdir()
    sources = sorted((DEMO_DIR / "segmentation" / "Fetal_HC" / "imgs").glob("*.png"))[:6]
    for index, source in enumerate(sources):
        shutil.copy(source, dataset / "imgs" / source.name)
        image = np.array(Image.open(source))
        mask = np.zeros(image.shape[:2], np.uint8)
        height, width = mask.shape
        mask[height // 4 : height // 2, width // 4 : width // 2] = 128
        mask[height // 2 : 3 * height // 4, width // 2 : 3 * width // 4] = 255 if index % 2 else 128
        Image.fromarray(mask).save(dataset / "masks" / source.name)
    names = [source.name for source in sources]
    for split, chosen in {"train": names[:4], "val": names[4:], "test": names[4:]}.items():
        (dataset / f"{split}.txt").write_text("\n".join(chosen) + "\n")
    registry = root / "datasets.yaml"
    registry.write_text(
        "extra_organs: [nerve]\n"
        "datasets:\n"
        "- {name: NERVE, task: segmentation, organ: nerve, object_type: organ, root: segmentation/NERVE,\n"
        "   classes: {background: 0, fascicle: 128, epineurium: 255}}\n"
    )
    return registry


def test_a_model_with_an_extra_organ_and_three_classes_serves_without_config_edits(workdir):
    data = workdir / "nerve_data"
    write_three_class_dataset(data)
    ckpt_dir = workdir / "nerve_models"
    run_bundle("pretrain", overrides={"dataset_dir": data, "ckpt_dir": ckpt_dir, "output_dir": workdir / "nerve_runs"})
    description = read_checkpoint(ckpt_dir / "model.pt").description
    assert description.vocabulary["position"][-1] == "nerve"
    assert description.seg_classes == ["background", "fascicle", "epineurium"]
    output_dir = workdir / "nerve_out"
    bare_inference(data / "segmentation" / "NERVE" / "imgs", output_dir, ckpt_dir / "model.pt", "nerve", "organ")
    for source in (data / "segmentation" / "NERVE" / "imgs").glob("*.png"):
        mask = np.array(Image.open(output_dir / source.name))
        assert mask.shape == np.array(Image.open(source)).shape[:2]
        assert set(np.unique(mask)) <= {0, 1, 2}  # class indices: more than one object class


def test_inference_on_a_folder_of_mixed_dicom_kinds_writes_every_mask(workdir, tiny_checkpoint):
    """RGB and YBR colour, 8- and 16-bit MONOCHROME2 ultrasound DICOMs of one size share batches."""
    input_dir = workdir / "dicom_in"
    input_dir.mkdir()
    gray = np.array(Image.open(sorted((DEMO_DIR / "segmentation" / "BUSI" / "imgs").glob("*.png"))[0]).convert("L"))
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    write_dicom(input_dir / "rgb.dcm", rgb)
    write_dicom(input_dir / "ybr.dcm", rgb, "YBR_FULL")
    write_dicom(input_dir / "mono8.dcm", gray)
    write_dicom(input_dir / "mono16.dcm", gray.astype(np.uint16) * 257)
    output_dir = workdir / "dicom_out"
    bare_inference(input_dir, output_dir, tiny_checkpoint, "breast", "tumor")
    rows = list(csv.DictReader(open(output_dir / "predictions.csv")))
    assert [row["file"] for row in rows] == ["mono16.dcm", "mono8.dcm", "rgb.dcm", "ybr.dcm"]
    for stem in ("mono16", "mono8", "rgb", "ybr"):
        assert np.array(Image.open(output_dir / f"{stem}.png")).shape == gray.shape
