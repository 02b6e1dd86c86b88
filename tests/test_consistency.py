"""Semi-supervised consistency training (bundle.networks.consistency, bundle.workflows.consistency)."""

from __future__ import annotations

import shutil

import pytest
import torch

from bundle.data import MixedShareSampler, training_sampler
from bundle.networks import load_model, read_checkpoint
from bundle.networks.consistency import ConsistencyNetwork
from bundle.prompts import DEFAULT_VOCABULARY
from bundle.workflows.consistency import ConsistencyLoss, sigmoid_rampup, unlabelled_pool, with_consistency
from bundle.workflows.losses import TaskMaskedLoss
from tests.bundle_runner import run_bundle, write_small_datalist
from tests.conftest import DEMO_DIR, TINY_SIZE, tiny_network

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = DEFAULT_VOCABULARY.encode({"position": "breast", "task": "segmentation", "mode": "whole", "type": "tumor"})


@pytest.mark.parametrize("conv_skips", [0, 8])
def test_auxiliary_decoders_train_beside_the_main_one_and_vanish_in_eval(conv_skips):
    network = tiny_network(conv_skips=conv_skips)
    wrapped = ConsistencyNetwork(network, num_aux=3).train()
    image = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    seg, cls, aux = wrapped(image, PROMPTS)
    assert len(aux) == 3 and all(a.shape == seg.shape for a in aux) and cls.shape == (2, 2)
    main = dict(network.seg_decoder.named_parameters())
    for decoder in wrapped.aux_decoders:  # drawn afresh, not copies of the main weights
        assert any(not torch.equal(p, main[name]) for name, p in decoder.named_parameters() if p.dim() > 1)
    wrapped.eval()
    with torch.no_grad():
        outputs, expected = wrapped(image, PROMPTS), network.eval()(image, PROMPTS)
    assert len(outputs) == 2 and all(torch.equal(a, b) for a, b in zip(outputs, expected))


def _targets(labelled: list[int]) -> dict:
    batch = len(labelled)
    label = torch.zeros(batch, 1, TINY_SIZE, TINY_SIZE, dtype=torch.long)
    label[:, :, 10:30, 10:30] = 1
    return {
        "label": label,
        "cls_label": torch.zeros(batch, dtype=torch.long),
        "task_id": torch.zeros(batch, dtype=torch.long),
        "labelled": torch.tensor(labelled),
        "dataset": ["BUSI"] * batch,
    }


def test_consistency_loss_is_supervised_on_labelled_rows_and_consistent_on_the_others():
    torch.manual_seed(0)
    seg = torch.randn(4, 2, TINY_SIZE, TINY_SIZE, requires_grad=True)
    aux = [torch.randn(4, 2, TINY_SIZE, TINY_SIZE, requires_grad=True) for _ in range(2)]
    cls = torch.randn(4, 2)
    target = _targets([1, 1, 0, 0])
    supervised = TaskMaskedLoss()
    loss = ConsistencyLoss(supervised, weight=2.0)
    expected = supervised((seg[:2], cls[:2]), {k: v[:2] for k, v in target.items()})
    expected = expected + sum(supervised.seg_loss(a[:2], target["label"][:2]) for a in aux)
    assert torch.allclose(loss((seg, cls, aux), target), expected)  # ramp 0: no consistency yet
    loss.ramp = 0.5
    reference = torch.softmax(seg[2:], 1)
    consistency = torch.stack([((torch.softmax(a[2:], 1) - reference) ** 2).mean() for a in aux]).mean()
    total = loss((seg, cls, aux), target)
    assert torch.allclose(total, expected + 2.0 * 0.5 * consistency)
    total.backward()
    # the main prediction is the target on unlabelled rows: no gradient reaches it there
    assert not seg.grad[2:].any() and seg.grad[:2].any() and aux[0].grad[2:].any()


def test_ramp_rises_from_near_zero_to_one():
    assert sigmoid_rampup(0.0) == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    assert sigmoid_rampup(0.5) < sigmoid_rampup(0.9) < sigmoid_rampup(1.0) == sigmoid_rampup(3.0) == 1.0


def test_mixed_batches_hold_the_unlabelled_share():
    samples = [{"task": "segmentation", "dataset": name} for name in ["A"] * 6 + ["B"] * 2]
    samples += [{"labelled": 0}] * 5
    sampler = training_sampler(samples, seed=1, batch_size=4, unlabelled_share=0.5)
    assert isinstance(sampler, MixedShareSampler)
    indices = list(sampler)
    assert len(indices) == len(sampler) and len(indices) % 4 == 0
    for start in range(0, len(indices), 4):
        batch = indices[start : start + 4]
        assert sum(index >= 8 for index in batch) == 2
    sampler.set_epoch(2)
    assert list(sampler) != indices  # each epoch draws anew
    with pytest.raises(ValueError, match="must follow the labelled ones"):
        training_sampler([{"labelled": 0}] + samples, batch_size=4)


def test_an_unlabelled_folder_without_prompts_is_refused_and_a_zero_weight_keeps_training_supervised(tmp_path):
    with pytest.raises(ValueError, match=r"unlabelled_dirs\[0\] must be \{dir: PATH, organ: NAME, object_type: NAME\}"):
        unlabelled_pool([str(tmp_path)], weight=1.0)
    assert unlabelled_pool([{"dir": str(tmp_path), "organ": "breast", "object_type": "tumor"}], weight=0.0) == []
    supervised = TaskMaskedLoss()
    assert with_consistency(supervised, 0.0, []) is supervised


def test_pretrain_with_unlabelled_images_saves_the_main_network_only(tmp_path):
    pool = tmp_path / "unlabelled" / "nested"
    pool.mkdir(parents=True)
    for source in sorted((DEMO_DIR / "segmentation" / "BUSI" / "imgs").glob("*.png"))[:6]:
        shutil.copy(source, pool / source.name)
    (pool / "corrupt.png").write_bytes(b"not a png")
    datalist = write_small_datalist(tmp_path / "datalist.json", {"training": 4, "validation": 2})
    folders = [{"dir": str(tmp_path / "unlabelled"), "organ": "breast", "object_type": "tumor"}]
    result = run_bundle(
        "pretrain",
        overrides={"datalist": datalist, "ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "runs",
                   "unlabelled_dirs": repr(folders), "consistency_weight": 1.0, "consistency_rampup_epochs": 1,
                   "epochs": 2, "aux_decoders": 2},
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "consistency training: 6 unlabelled images from 1 folders" in log and "corrupt.png" in log
    checkpoint = read_checkpoint(tmp_path / "models" / "model.pt")
    assert not any(key.startswith(("aux_", "network.")) for key in checkpoint.state_dict)
    main_parameters = len(list(load_model(tmp_path / "models" / "model.pt").parameters()))
    state = torch.load(tmp_path / "models" / "checkpoint_2.pt", weights_only=True)
    assert len(state["optimizer"]["param_groups"][0]["params"]) > main_parameters  # the auxiliary decoders learnt too
