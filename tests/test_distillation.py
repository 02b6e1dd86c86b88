"""Distillation: a student beside a frozen teacher, its loss, and configs/distill.yaml end to end."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from bundle.networks import load_model, read_checkpoint
from bundle.networks.distillation import LEVEL_WEIGHTS, DistillationNetwork
from bundle.prompts import DEFAULT_VOCABULARY
from bundle.workflows.distillation import DistillationLoss, kl_divergence
from bundle.workflows.losses import TaskMaskedLoss
from tests.bundle_runner import bare_inference, run_bundle, write_small_datalist
from tests.conftest import DEMO_DIR, REPO_ROOT, TINY_SIZE, tiny_network, write_checkpoint

STUDENT = {"embed_dim": 8, "num_heads": (2, 2, 4, 4), "conv_skips": 4}
TEACHER = {"conv_skips": 8}


def prompts(batch: int) -> dict[str, torch.Tensor]:
    names = {"position": "breast", "task": "segmentation", "mode": "whole", "type": "tumor"}
    return {key: value.expand(batch, -1) for key, value in DEFAULT_VOCABULARY.encode(names).items()}


@pytest.fixture
def pair() -> DistillationNetwork:
    return DistillationNetwork(tiny_network(1, **STUDENT), tiny_network(2, **TEACHER))


def test_training_returns_the_teachers_outputs_and_aligned_stage_features(pair):
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    pair.train()
    seg, cls, signals = pair(image, prompts(2))
    with torch.no_grad():
        teacher_seg, teacher_cls = pair.teacher(image, prompts(2))
    assert torch.allclose(signals.seg, teacher_seg) and torch.allclose(signals.cls, teacher_cls)
    # patch embedding, 4 encoder stages, 3 + 3 decoder stages
    assert len(signals.student_features) == len(signals.teacher_features) == len(pair.maps) == 11
    for student, teacher in zip(signals.student_features, signals.teacher_features):
        assert student.shape == teacher.shape and student.requires_grad and not teacher.requires_grad
    assert signals.weights[0] == LEVEL_WEIGHTS[0] and signals.weights[4] == LEVEL_WEIGHTS[3]  # embedding, bottleneck
    assert seg.shape == teacher_seg.shape and cls.shape == teacher_cls.shape
    assert not pair.teacher.training


def test_a_mirrored_teacher_gives_the_mean_of_both_views_and_the_plain_views_features():
    pair = DistillationNetwork(tiny_network(1, **STUDENT), tiny_network(2, **TEACHER), mirrored_teacher=True)
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(1))
    pair.train()
    _, _, signals = pair(image, prompts(2))
    with torch.no_grad():
        plain_seg, plain_cls = pair.teacher(image, prompts(2))
        plain_features = pair.teacher_stages.take()
        mirrored_seg, mirrored_cls = pair.teacher(torch.flip(image, dims=(-1,)), prompts(2))
        pair.teacher_stages.take()
    assert torch.allclose(signals.seg, (plain_seg + torch.flip(mirrored_seg, dims=(-1,))) / 2)
    assert torch.allclose(signals.cls, (plain_cls + mirrored_cls) / 2)
    assert not torch.allclose(signals.seg, plain_seg)
    assert all(torch.equal(kept, plain) for kept, plain in zip(signals.teacher_features, plain_features))


def test_the_teacher_stays_out_of_the_state_the_optimizer_and_the_gradients(pair):
    teacher_before = {key: value.clone() for key, value in pair.teacher.state_dict().items()}
    assert all(key.startswith(("student.", "maps.")) for key in pair.state_dict())
    optimizer = torch.optim.Adam(pair.parameters(), lr=1e-2)
    loss = DistillationLoss(TaskMaskedLoss())
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    target = {"label": torch.zeros(2, 1, TINY_SIZE, TINY_SIZE, dtype=torch.long), "cls_label": torch.zeros(2, dtype=torch.long),
              "task_id": torch.zeros(2, dtype=torch.long), "labelled": torch.tensor([1, 0])}  # fmt: skip
    pair.train()
    loss(pair(image, prompts(2)), target).backward()
    optimizer.step()
    assert all(torch.equal(value, teacher_before[key]) for key, value in pair.teacher.state_dict().items())
    assert all(parameter.grad is not None for parameter in pair.maps.parameters())


def test_eval_mode_is_the_student_alone(pair):
    image = torch.rand(1, 3, TINY_SIZE, TINY_SIZE)
    pair.eval()
    with torch.no_grad():
        seg, cls = pair(image, prompts(1))
        expected_seg, expected_cls = pair.student(image, prompts(1))
    assert torch.equal(seg, expected_seg) and torch.equal(cls, expected_cls)


@pytest.mark.parametrize(
    "student, message",
    [({"window_size": 4}, "student map"), ({"prompt_sizes": {"position": 12, "task": 2, "mode": 3, "type": 2}}, "prompt_sizes")],
)
def test_a_student_of_another_layout_is_refused_naming_what_differs(student, message):
    with pytest.raises(ValueError, match=message):
        DistillationNetwork(tiny_network(1, **student), tiny_network(2))


def test_kl_divergence_is_the_scaled_kl_of_softened_outputs():
    student, teacher = torch.randn(3, 2, 5, 5), torch.randn(3, 2, 5, 5)
    reference = F.kl_div(F.log_softmax(student / 2, 1), F.log_softmax(teacher / 2, 1), log_target=True, reduction="none")
    assert torch.allclose(kl_divergence(student, teacher, 2.0), 4 * reference.sum(1).mean())
    assert kl_divergence(teacher, teacher, 1.0).abs() < 1e-6


def test_each_term_switches_off_and_unlabelled_rows_learn_from_the_teacher_only(pair):
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    target = {"label": torch.ones(2, 1, TINY_SIZE, TINY_SIZE, dtype=torch.long), "cls_label": torch.zeros(2, dtype=torch.long),
              "task_id": torch.zeros(2, dtype=torch.long), "labelled": torch.tensor([1, 0])}  # fmt: skip
    pair.train()
    pred = pair(image, prompts(2))
    supervised = TaskMaskedLoss()
    task_only = DistillationLoss(supervised, seg_weight=0, cls_weight=0, feature_weight=0)
    assert torch.allclose(task_only(pred, target), supervised((pred[0][:1], pred[1][:1]), {k: v[:1] for k, v in target.items()}))
    unlabelled = {**target, "labelled": torch.tensor([0, 0])}
    seg_only = DistillationLoss(supervised, seg_weight=1, cls_weight=0, feature_weight=0)
    assert torch.allclose(seg_only(pred, unlabelled), kl_divergence(pred[0], pred[2].seg, 1.0))
    features_only = DistillationLoss(supervised, seg_weight=0, cls_weight=0, feature_weight=1, task_weight=0)
    assert torch.allclose(features_only(pred, target), DistillationLoss.feature_term(pred[2]))
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(supervised, temperature=0)


def test_distill_config_trains_a_self_describing_student_that_infers(tmp_path):
    teacher = write_checkpoint(tmp_path / "teacher.pt", tiny_network(3, **TEACHER, embed_dim=24))
    pool = tmp_path / "unlabelled"
    pool.mkdir()
    for source in sorted((DEMO_DIR / "segmentation" / "TG3K" / "imgs").glob("*.png"))[:4]:
        shutil.copy(source, pool / source.name)
    datalist = write_small_datalist(tmp_path / "datalist.json", {"training": 4, "validation": 2})
    folders = [{"dir": str(pool), "organ": "thyroid", "object_type": "organ"}]
    result = run_bundle(
        "pretrain", "cpu", "distill",
        overrides={"datalist": datalist, "ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "runs",
                   "teacher_ckpt": teacher, "unlabelled_dirs": repr(folders), "epochs": 2},
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "distillation: 4 unlabelled images from 1 folders" in log and "11 stages aligned" in log
    student = read_checkpoint(tmp_path / "models" / "model.pt")
    assert not any(key.startswith(("maps.", "student.")) for key in student.state_dict)
    assert student.description.image_size == TINY_SIZE
    assert student.description.vocabulary == read_checkpoint(teacher).description.vocabulary
    assert sum(p.numel() for p in load_model(student.source).parameters()) < sum(
        p.numel() for p in load_model(teacher).parameters()
    )
    state = torch.load(tmp_path / "models" / "checkpoint_2.pt", weights_only=True)
    assert any(key.startswith("maps.") for key in state["model"])  # the maps resume with the student
    output = tmp_path / "predictions"
    bare_inference(pool, output, student.source, "thyroid", "organ")
    assert len(list(output.glob("*_overlay.png"))) == 4


def distill_script():
    spec = importlib.util.spec_from_file_location("distill_script", REPO_ROOT / "scripts" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "teacher_layout, student_layout",
    [
        ({}, {"patch_size": 4, "window_size": 4, "encoder_depths": [1, 1, 1, 1], "num_heads": [2, 4, 8, 16]}),
        ({"patch_size": 8, "window_size": 2, "encoder_depths": [2, 2, 2], "decoder_depths": [1, 1, 1], "num_heads": [3, 6, 12]},
         {"patch_size": 8, "window_size": 2, "encoder_depths": [1, 1, 1], "num_heads": [2, 4, 8]}),
    ],
)  # fmt: skip
def test_distill_config_builds_the_student_in_its_teachers_stage_layout(tmp_path, teacher_layout, student_layout):
    """The 0.3.0 teacher's four stages of 4-pixel tokens and the 0.6.0 teacher's three of 8-pixel ones:
    the student takes patch size, window and stage count from the checkpoint, so its stages distil;
    the recipe trains it 200 epochs, as the shipped student was."""
    teacher = tiny_network(**{"window_size": 4, "img_size": 64, **teacher_layout})
    path = write_checkpoint(tmp_path / "teacher.pt", teacher)
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / name) for name in ("pretrain.yaml", "cpu.yaml", "distill.yaml")])
    parser.update({"bundle_root": str(REPO_ROOT), "teacher_ckpt": str(path)})
    student = parser.get_parsed_content("network_def")
    assert {key: student.arguments[key] for key in student_layout} == student_layout
    assert student.arguments["embed_dim"] == 16 and student.arguments["conv_skips"] == 8
    assert parser.get_parsed_content("epochs") == 200  # the shipped student's run (docs/README.md)
    DistillationNetwork(student, load_model(path))  # raises if any distilled stage differs in map size


def test_the_unlabelled_pool_leaves_out_every_image_that_is_also_labelled(tmp_path):
    pool = tmp_path / "pool"
    rows = ["id,dataset,source_repo,source_commit,source_path,also_in_shared_labelled"]
    for folder in ("busi", "hc18", "tg3k"):
        (pool / folder).mkdir(parents=True)
        for index, labelled in enumerate(("no", "yes", "no")):
            name = f"{folder}_u{index}"
            shutil.copy(sorted((DEMO_DIR / "segmentation" / "TG3K" / "imgs").glob("*.png"))[index], pool / folder / f"{name}.png")
            rows.append(f"{name},X,repo,commit,path/{index}.png,{labelled}")
    (pool / "provenance.csv").write_text("\n".join(rows) + "\n")
    entries = distill_script().link_pool(pool, tmp_path / "links")
    assert [(entry["organ"], entry["object_type"]) for entry in entries] == [("breast", "tumor"), ("head", "organ"), ("thyroid", "organ")]
    for entry, folder in zip(entries, ("busi", "hc18", "tg3k")):
        assert sorted(path.name for path in Path(entry["dir"]).iterdir()) == [f"{folder}_u0.png", f"{folder}_u2.png"]


def test_the_distill_script_passes_further_pairs_on_as_config_overrides_and_can_leave_the_pool_out(tmp_path):
    script = distill_script()
    args, overrides = script.parse_arguments(
        ["--pool_dir", str(tmp_path), "--no_pool", "--distill_feature_weight", "0", "--epochs", "3"]
    )
    command = script.bundle_command(args, overrides)
    pairs = dict(zip(command[command.index("--teacher_ckpt") :: 2], command[command.index("--teacher_ckpt") + 1 :: 2]))
    assert pairs["--distill_feature_weight"] == "0" and pairs["--epochs"] == "3"
    assert "--unlabelled_dirs" not in pairs
    with pytest.raises(SystemExit):
        script.parse_arguments(["--distill_feature_weight"])
