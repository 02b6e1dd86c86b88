"""Workflow pieces in-process: task-masked loss, per-dataset metrics, prompt inferer, sync freezing,
batch preparation, and the MONAI bundle contract of every config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from monai.losses import DiceCELoss

from bundle.data import load_registry
from bundle.flags import as_flag
from bundle.networks import describe
from bundle.workflows.averaging import AverageUpdates, WeightAverage
from bundle.workflows.batch import PreparePromptBatch
from bundle.workflows.inference import mask_postprocessing
from bundle.workflows.inferers import PromptInferer
from bundle.workflows.losses import TaskMaskedLoss
from bundle.workflows.metrics import MultiTaskMetrics, SampleRecord, summarise
from bundle.workflows.overlay import inner_outline, overlay, paletted_overlay
from bundle.workflows.resume import ResumeFromLatest
from bundle.workflows.schedules import decay_lr
from bundle.workflows.selection import average_model_filename, best_model_filename, last_model_filename
from bundle.workflows.sync import prompt_parameters
from tests.bundle_runner import DEMO_DIR, REPO_ROOT, config_files
from tests.conftest import tiny_network


def mixed_batch_targets() -> dict:
    label = torch.zeros(4, 1, 8, 8, dtype=torch.long)
    label[0, 0, 2:5, 2:5] = 1
    label[1, 0, :4] = 1
    return {"label": label, "cls_label": torch.tensor([0, 0, 1, 0]), "task_id": torch.tensor([0, 0, 1, 1])}


def test_task_masked_loss_applies_each_term_to_its_own_samples_only():
    torch.manual_seed(0)
    seg, cls = torch.randn(4, 2, 8, 8), torch.randn(4, 2)
    target = mixed_batch_targets()
    expected_seg = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True,
                              smooth_nr=1e-5, smooth_dr=1e-5, lambda_dice=0.6, lambda_ce=0.4)(seg[:2], target["label"][:2])  # fmt: skip
    expected_cls = torch.nn.functional.cross_entropy(cls[2:], target["cls_label"][2:])
    torch.testing.assert_close(TaskMaskedLoss()((seg, cls), target), expected_seg + expected_cls)
    # predictions of the other task's samples must not matter
    seg_noise, cls_noise = seg.clone(), cls.clone()
    seg_noise[2:] += 100
    cls_noise[:2] += 100
    torch.testing.assert_close(TaskMaskedLoss()((seg_noise, cls_noise), target), expected_seg + expected_cls)


def two_segmentation_samples(seed: int, foreground_above: float) -> tuple:
    """Random seg logits (2, 2, 8, 8), binary labels (2, 1, 8, 8), their target dict, softmax and one-hot."""
    torch.manual_seed(seed)
    seg = torch.randn(2, 2, 8, 8)
    label = (torch.rand(2, 1, 8, 8) > foreground_above).long()
    target = {"label": label, "cls_label": torch.zeros(2, dtype=torch.long), "task_id": torch.zeros(2, dtype=torch.long)}
    return seg, label, target, torch.softmax(seg, 1), torch.cat([label == 0, label == 1], 1).float()


def test_task_masked_loss_matches_the_official_dice_formula():
    """Official DiceLoss: per class 1 - (2·Σ p·t + 1e-5) / (Σ p² + Σ t² + 1e-5), averaged over classes."""
    seg, label, target, probs, onehot = two_segmentation_samples(seed=1, foreground_above=0.5)
    dice = sum(1 - (2 * (probs[:, c] * onehot[:, c]).sum() + 1e-5) / ((probs[:, c] ** 2).sum() + onehot[:, c].sum() + 1e-5) for c in range(2)) / 2
    ce = torch.nn.functional.cross_entropy(seg, label[:, 0])
    torch.testing.assert_close(TaskMaskedLoss(cls_weight=0.0)((seg, torch.zeros(2, 2)), target), 0.4 * ce + 0.6 * dice)


def test_task_masked_loss_plain_dice_is_per_image_with_plain_denominators():
    """official_dice=False: per image and class 1 - (2·Σ p·t + 1e-5) / (Σ p + Σ t + 1e-5), averaged."""
    seg, label, target, probs, onehot = two_segmentation_samples(seed=2, foreground_above=0.7)
    overlap, sizes = (probs * onehot).sum((2, 3)), probs.sum((2, 3)) + onehot.sum((2, 3))
    dice = (1 - (2 * overlap + 1e-5) / (sizes + 1e-5)).mean()
    ce = torch.nn.functional.cross_entropy(seg, label[:, 0])
    plain = TaskMaskedLoss(cls_weight=0.0, official_dice=False)((seg, torch.zeros(2, 2)), target)
    torch.testing.assert_close(plain, 0.4 * ce + 0.6 * dice)
    assert abs(float(plain - TaskMaskedLoss(cls_weight=0.0)((seg, torch.zeros(2, 2)), target))) > 1e-3


def test_task_masked_loss_without_background_dice_takes_the_object_dice_alone():
    """dice_background=False: the Dice term is the foreground channel's only; the CE keeps both."""
    seg, label, target, probs, onehot = two_segmentation_samples(seed=3, foreground_above=0.8)
    overlap, sizes = (probs * onehot).sum((2, 3)), probs.sum((2, 3)) + onehot.sum((2, 3))
    foreground_dice = (1 - (2 * overlap[:, 1] + 1e-5) / (sizes[:, 1] + 1e-5)).mean()
    ce = torch.nn.functional.cross_entropy(seg, label[:, 0])
    loss = TaskMaskedLoss(ce_weight=0.2, dice_weight=0.8, cls_weight=0.0, official_dice=False, dice_background=False)
    torch.testing.assert_close(loss((seg, torch.zeros(2, 2)), target), 0.2 * ce + 0.8 * foreground_dice)


def test_metrics_report_per_dataset_dice_excluding_empty_truth_and_cls_auc():
    metric = MultiTaskMetrics()
    target = mixed_batch_targets()
    target["label"][1] = 0  # empty ground truth: excluded from Dice
    target["dataset"] = ["TG3K", "TG3K", "BUSI", "BUSI"]
    seg = torch.zeros(4, 2, 8, 8)
    seg[0, 1, 2:5, 2:4] = 5.0  # predicts 6 of the 9 true pixels
    cls = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    metric.update(((seg, cls), target))
    flat = metric.compute()
    assert flat["TG3K/seg_n"] == 1
    assert flat["TG3K/dice"] == pytest.approx(2 * 6 / (9 + 6))
    assert flat["BUSI/accuracy"] == 1.0 and flat["BUSI/auc"] == 1.0
    assert flat["mean/score"] == pytest.approx((flat["TG3K/dice"] + 1.0) / 2)


def test_summarise_leaves_auc_undefined_for_a_single_class():
    records = [SampleRecord("X", "classification", probabilities=[0.8, 0.2], label=0), SampleRecord("X", "classification", probabilities=[0.3, 0.7], label=0)]
    table, means = summarise(records)
    assert table["X"]["accuracy"] == 0.5 and math.isnan(table["X"]["auc"])
    assert math.isnan(means["score"])


def test_prompt_inferer_falls_back_to_fp32_with_a_warning_without_native_bf16(caplog, monkeypatch):
    monkeypatch.setattr("bundle.workflows.inferers.cpu_supports_bf16", lambda: False)
    net = tiny_network().eval()
    image = torch.rand(1, 3, 64, 64)
    prompts = {"position": torch.eye(11)[1], "task": torch.eye(2)[0], "mode": torch.eye(3)[0], "type": torch.eye(2)[0]}
    with caplog.at_level("WARNING"), torch.no_grad():
        seg, cls = PromptInferer("bf16")(image, net, prompts)
        expected = net(image, prompts)
    assert "lacks native bf16" in caplog.text
    assert seg.dtype == torch.float32
    torch.testing.assert_close(seg, expected[0])
    with pytest.raises(ValueError, match="autocast must be"):
        PromptInferer("fp16")


def test_prompt_inferer_flip_averages_the_image_and_its_mirror():
    torch.manual_seed(0)
    net = tiny_network().eval()
    image = torch.rand(2, 3, 64, 64)
    prompts = {"position": torch.eye(11)[[1, 2]], "task": torch.eye(2)[[0, 0]], "mode": torch.eye(3)[[0, 0]], "type": torch.eye(2)[[0, 1]]}
    with torch.no_grad():
        seg, cls = PromptInferer(flip="true")(image, net, prompts)
        plain_seg, plain_cls = net(image, prompts)
        mirror_seg, mirror_cls = net(torch.flip(image, dims=(-1,)), prompts)
        plain_only = PromptInferer(flip=False)(image, net, prompts)
    torch.testing.assert_close(seg, (plain_seg + torch.flip(mirror_seg, dims=(-1,))) / 2)
    torch.testing.assert_close(cls, (plain_cls + mirror_cls) / 2)
    assert not torch.allclose(seg, plain_seg)  # the mirror changed the answer: the tiny network is not symmetric
    assert torch.equal(plain_only[0], plain_seg)
    with pytest.raises(ValueError, match="test_time_flip must be true or false"):
        PromptInferer(flip="maybe")


def test_weight_average_follows_the_exponential_moving_average_and_resumes(tmp_path):
    """Each iteration sets the weights to a known value; the average must follow ``(1 - m) a + m w``,
    be written as a bundle checkpoint at the end, and carry over through its state dict."""
    net = tiny_network()
    start = {key: value.clone() for key, value in net.state_dict().items()}
    momentum, steps = 0.25, 3
    average = WeightAverage(net, momentum, tmp_path, "model_ema.pt", describe(net, load_registry(DEMO_DIR / "datasets.yaml"), 64))

    def step(engine, batch):
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.fill_(float(engine.state.iteration))

    engine = Engine(step)
    average.attach(engine)
    engine.run([0] * steps, max_epochs=1)
    name = next(name for name, _ in net.named_parameters())
    expected = start[name].clone()
    for iteration in range(1, steps + 1):
        expected = (1 - momentum) * expected + momentum * iteration
    saved = torch.load(tmp_path / "model_ema.pt", weights_only=True)
    torch.testing.assert_close(saved["model"][name], expected)
    torch.testing.assert_close(average.state_dict()[name], expected)
    resumed = WeightAverage(tiny_network(), momentum, tmp_path, "other.pt", None)
    resumed.load_state_dict(average.state_dict())
    torch.testing.assert_close(resumed.network.state_dict()[name], expected)
    off = WeightAverage(net, 0, tmp_path, "none.pt", None)
    off.attach(Engine(step))
    assert off.network is None and off.state_dict() == {}
    with pytest.raises(ValueError, match=r"ema_momentum must be in \[0, 1\)"):
        WeightAverage(net, 1.5, tmp_path, "x.pt", None)


def test_resume_from_a_state_without_the_weight_average_loads_the_rest_and_restarts_the_average(tmp_path, caplog):
    """A training state written before the average existed resumes: the network loads, and the average
    starts at the resumed weights, not at the network's weights from before the resume."""
    resumed = {key: value + 1 for key, value in tiny_network().state_dict().items()}
    torch.save({"model": resumed}, tmp_path / "checkpoint_2.pt")
    net = tiny_network()
    description = describe(net, load_registry(DEMO_DIR / "datasets.yaml"), 64)
    average = WeightAverage(net, 0.5, tmp_path, "model_ema.pt", description)
    engine = Engine(lambda engine, batch: None)
    ResumeFromLatest(tmp_path, {"model": net, "weight_average": average}, enabled=True).attach(engine)
    AverageUpdates(average).attach(engine)
    with caplog.at_level("WARNING"):
        engine.run([0], max_epochs=1)
    assert "holds no ['trainer', 'weight_average']" in caplog.text
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, resumed[name])
        torch.testing.assert_close(average.network.state_dict()[name], resumed[name])


def test_model_selection_names_the_files_of_best_last_and_averaged_weights():
    assert [best_model_filename(s) for s in ("best", "last", "ema")] == ["model.pt", "model_best.pt", "model_best.pt"]
    assert [last_model_filename(s) for s in ("last", "ema")] == ["model.pt", "model_last.pt"]
    assert average_model_filename("last", 0.01) == "model_ema.pt" and average_model_filename("ema", 0.01) == "model.pt"
    with pytest.raises(ValueError, match="needs ema_momentum > 0"):
        average_model_filename("ema", 0)
    with pytest.raises(ValueError, match="model_selection must be one of"):
        last_model_filename("final")


def test_sync_freezes_everything_but_the_prompt_projections():
    net = tiny_network()
    trainable = prompt_parameters(net)
    names = {name for name, p in net.named_parameters() if p.requires_grad}
    assert names and all(".prompt_proj." in name for name in names)
    assert len(trainable) == len(names) == 2 * 4 * 6  # weight + bias, 4 prompts, 3 + 3 decoder blocks
    with pytest.raises(ValueError, match="prompt=False"):
        prompt_parameters(tiny_network(prompt=False))


def test_sync_trains_the_prompt_gains_of_the_conv_skip_path():
    net = tiny_network(conv_skips=4)
    trainable = prompt_parameters(net)
    names = {name for name, p in net.named_parameters() if p.requires_grad}
    gains = {f"conv_skips.up.{i}.prompt_proj.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert gains <= names and all(".prompt_proj." in name for name in names)
    before = {key: value.clone() for key, value in net.state_dict().items()}
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    prompts = {key: torch.eye(n)[:1].expand(2, -1) for key, n in net.prompt_sizes.items()}
    seg, _ = net(torch.rand(2, 3, 64, 64), prompts)
    seg.square().mean().backward()
    optimizer.step()
    changed = {key for key, value in net.state_dict().items() if not torch.equal(value, before[key])}
    assert gains <= changed <= names


def test_prompt_parameters_freezes_batch_norm_statistics_in_training_mode():
    net = tiny_network(patch_embed="conv")
    before = {key: value.clone() for key, value in net.state_dict().items()}
    prompt_parameters(net)
    net.train()  # what the trainer does every iteration
    prompts = {key: torch.eye(n)[:1].expand(2, -1) for key, n in net.prompt_sizes.items()}
    seg, cls = net(torch.rand(2, 3, 64, 64), prompts)
    (seg.mean() + cls.mean()).backward()
    batch_norm = [key for key in before if ".adn.N." in key]
    assert batch_norm and all(torch.equal(before[key], net.state_dict()[key]) for key in batch_norm)
    # without the freeze the same forward moves the statistics
    free = tiny_network(patch_embed="conv").train()
    start = {key: value.clone() for key, value in free.state_dict().items() if key in batch_norm}
    free(torch.rand(2, 3, 64, 64), prompts)
    assert not all(torch.equal(start[key], free.state_dict()[key]) for key in batch_norm)


def test_prepare_batch_returns_targets_and_prompts_and_names_missing_keys():
    batch = {
        "image": torch.rand(2, 3, 8, 8), "label": torch.zeros(2, 1, 8, 8), "cls_label": torch.tensor([0, 1]),
        "task_id": torch.tensor([0, 1]), "dataset": ["A", "B"],
        **{f"{k}_prompt": torch.zeros(2, n) for k, n in {"position": 11, "task": 2, "mode": 3, "type": 2}.items()},
    }  # fmt: skip
    image, targets, args, kwargs = PreparePromptBatch()(batch, torch.device("cpu"))
    assert image.shape == (2, 3, 8, 8) and targets["label"].dtype == torch.long and targets["dataset"] == ["A", "B"]
    assert set(args[0]) == {"position", "task", "mode", "type"} and kwargs == {}
    del batch["mode_prompt"]
    with pytest.raises(KeyError, match="mode_prompt"):
        PreparePromptBatch()(batch, torch.device("cpu"))


# the self-supervised stage needs images to build its dataset: a demo image folder, labels unused
SSL_POOL = {"unlabelled_dirs": [str(REPO_ROOT / "data" / "demo" / "segmentation" / "Fetal_HC" / "imgs")]}


@pytest.mark.parametrize(
    "stages, workflow_type",
    [(["pretrain"], "train"), (["pretrain", "sync"], "train"), (["pretrain", "finetune"], "train"),
     (["ssl_pretrain"], "train"), (["evaluate"], "infer"), (["inference"], "infer")],
)  # fmt: skip
def test_configs_satisfy_the_monai_bundle_workflow_contract(stages, workflow_type, monkeypatch, tiny_checkpoint, tmp_path):
    monkeypatch.chdir(REPO_ROOT)
    workflow = ConfigWorkflow(
        config_file=config_files(*stages),
        meta_file="configs/metadata.json",
        logging_file="configs/logging.conf",
        workflow_type=workflow_type,
        ckpt_path=str(tiny_checkpoint),
        init_ckpt=str(tiny_checkpoint),
        # building the engines makes their event and checkpoint folders: keep them out of the repo
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        eval_dir=str(tmp_path / "eval"),
        **(SSL_POOL if "ssl_pretrain" in stages else {}),
    )
    workflow.initialize()
    assert not workflow.check_properties()


def learning_rates(schedule: torch.optim.lr_scheduler.LRScheduler, iterations: int) -> list[float]:
    """The learning rate of each of ``iterations`` optimizer steps under ``schedule``."""
    optimizer = schedule.optimizer
    rates = []
    for _ in range(iterations):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    rates.append(optimizer.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("decay", ["poly", "cosine"])
def test_decay_lr_falls_from_the_learning_rate_to_zero(decay):
    param = torch.nn.Parameter(torch.zeros(1))
    rates = learning_rates(decay_lr(torch.optim.Adam([param], lr=1e-3), 20, decay=decay), 20)
    assert rates[0] == pytest.approx(1e-3)
    assert rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(0.0, abs=1e-12)
    expected = (1 - 8 / 20) ** 0.9 if decay == "poly" else 0.5 * (1 + math.cos(math.pi * 8 / 20))
    assert rates[8] == pytest.approx(1e-3 * expected)


def test_decay_lr_refuses_an_unknown_decay_and_an_empty_run():
    param = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="step"):
        decay_lr(torch.optim.Adam([param], lr=1e-3), total_iters=5, decay="step")
    with pytest.raises(ValueError, match="total_iters >= 1"):
        decay_lr(torch.optim.Adam([param], lr=1e-3), total_iters=0)


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), ("true", True), ("false", False), ("False", False), (" YES ", True), ("off", False), (1, True), (0, False)],
)
def test_command_line_switches_read_as_booleans(value, expected):
    # python-fire hands `--resume false` to the config as the truthy string 'false'
    assert as_flag(value, "resume") is expected


def test_a_switch_that_is_neither_true_nor_false_is_refused_by_name():
    with pytest.raises(ValueError, match="gain_contrast must be true or false, got 'maybe'"):
        as_flag("maybe", "gain_contrast")


def test_mask_postprocessing_keeps_each_class_largest_component_with_holes_filled():
    mask = torch.zeros(1, 12, 12, dtype=torch.uint8)
    mask[0, 1:7, 1:7] = 1  # a ring of class 1 with a hole at (3:5, 3:5)
    mask[0, 3:5, 3:5] = 0
    mask[0, 10, 10] = 1  # a speck of class 1
    mask[0, 8:11, 1:3] = 2  # class 2, kept whatever class 1 does
    expected = torch.zeros_like(mask)
    expected[0, 1:7, 1:7] = 1
    expected[0, 8:11, 1:3] = 2
    assert torch.equal(torch.as_tensor(mask_postprocessing(True, True)(mask.clone())), expected)
    assert torch.equal(torch.as_tensor(mask_postprocessing(True, True, classes=3)(mask.clone())), expected)
    only_largest = torch.as_tensor(mask_postprocessing("true", "false")(mask.clone()))
    assert only_largest[0, 10, 10] == 0 and only_largest[0, 3, 3] == 0
    assert mask_postprocessing(False, "false") is None


@pytest.mark.parametrize("classes", [2, 3])
def test_a_paletted_overlay_shows_what_the_rgb_overlay_shows_within_a_gray_level(classes):
    generator = np.random.default_rng(0)
    image = generator.random((1, 24, 20)).astype(np.float32)
    mask = np.zeros((24, 20), np.uint8)
    mask[4:14, 3:12] = 1
    mask[16:22, 10:18] = classes - 1
    picture = paletted_overlay(image, mask, classes)
    assert picture.mode == "P"
    difference = np.abs(np.asarray(picture.convert("RGB")).astype(int) - overlay(image, mask).astype(int))
    assert difference.max() <= 2


def test_the_overlay_outline_is_skimages_inner_boundary():
    from skimage.segmentation import find_boundaries

    region = np.random.default_rng(1).random((40, 30)) > 0.5
    region[:10, :10] = True  # a block on the image corner
    assert np.array_equal(inner_outline(region), find_boundaries(region, mode="inner"))


def test_samples_of_one_preprocessing_are_inverted_together_as_each_alone(tmp_path):
    from PIL import Image

    from bundle.transforms import inference_transforms
    from bundle.workflows.inference import PredictionWriter, same_trace

    rng = np.random.default_rng(0)
    shapes = [(90, 120), (90, 120), (70, 50), (90, 120)]
    samples = []
    for index, shape in enumerate(shapes):
        path = tmp_path / f"image{index}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
        samples.append({"image": str(path)})
    preprocessing = inference_transforms(32, "breast", "tumor", geometry="letterbox")
    images = [preprocessing(sample)["image"] for sample in samples]
    assert same_trace(images[0].applied_operations, images[1].applied_operations)
    assert not same_trace(images[0].applied_operations, images[2].applied_operations)
    logits = torch.randn(len(images), 2, 32, 32)
    writer = PredictionWriter(tmp_path / "out", preprocessing, ["benign", "malignant"])
    together = writer.invert_grouped(images, logits)
    for image, batch_logits, inverted, shape in zip(images, logits, together, shapes):
        alone = writer.invert({"image": image, "pred": MetaTensor(batch_logits)})["pred"]
        assert inverted.shape == (2, *shape)
        assert torch.equal(inverted, alone.as_subclass(torch.Tensor))
