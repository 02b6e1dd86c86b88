"""The live official PerceptGuide code, run by benchmarks/official_network.py (the benchmark's ``official``
path), computes what this bundle's network computes on the same weights; and our weights map to
the official layout and back unchanged.

The live tests need the official code (github.com/Zehui-Lin/PerceptGuide): a checkout or git
directory named by $PERCEPTGUIDE_OFFICIAL_REPO. They skip, saying so, when it is not set (the
code is not part of ../shared, so REQUIRE_SHARED does not apply); a path that is set but holds
no official code fails them.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from benchmarks import official_network
from bundle.networks import convert_official_state_dict, to_official_state_dict
from tests.test_networks import PROMPT_NAMES, TINY, batch_prompts, tiny_net

OFFICIAL_REPO_VARIABLE = "PERCEPTGUIDE_OFFICIAL_REPO"
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def official_repo() -> str:
    """The official code's checkout or git directory, from the environment."""
    repo = os.environ.get(OFFICIAL_REPO_VARIABLE)
    if not repo:
        pytest.skip(f"{OFFICIAL_REPO_VARIABLE} is not set (a PerceptGuide checkout or git directory)")
    return repo


def _max_diff(got, expected) -> float:
    return max((a - b).abs().max().item() for a, b in zip(got, expected))


@pytest.mark.parametrize("variant", ["prompt", "plain"])
def test_to_official_state_dict_inverts_the_official_conversion(golden, variant):
    official = golden[variant]["state_dict"]
    back = to_official_state_dict(convert_official_state_dict(official), official)
    assert back.keys() == official.keys()
    assert all(torch.equal(back[key], official[key]) for key in official)


def test_to_official_state_dict_names_what_does_not_fit(golden):
    ours = convert_official_state_dict(golden["prompt"]["state_dict"])
    ours["extra.weight"] = torch.zeros(1)
    del ours["encoder_norm.weight"]
    with pytest.raises(ValueError, match=r"(?s)no tensor for \(1\): swin\.norm\.weight.*unused \(1\): extra\.weight"):
        to_official_state_dict(ours, golden["prompt"]["state_dict"])


def test_official_imports_leave_no_stand_ins_behind(official_repo):
    before = {name: sys.modules.get(name) for name in ("timm", "timm.models.layers", "datasets", "einops")}
    official_network.load_official.__wrapped__(official_repo)  # executes again even when cached
    assert {name: sys.modules.get(name) for name in before} == before


def test_einops_stand_in_equals_einops():
    einops = pytest.importorskip("einops")
    x = torch.randn(2, 3, 5, 4 * 16)
    for scale in (2, 4):
        c = x.shape[-1] // scale**2
        expected = einops.rearrange(x, official_network.REARRANGE_PATTERN, p1=scale, p2=scale, c=c)
        got = official_network.rearrange_stand_in(x, official_network.REARRANGE_PATTERN, p1=scale, p2=scale, c=c)
        assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "names, bug",
    [
        ([PROMPT_NAMES[0]] * 2, False),  # one prompt for the batch, as the benchmark feeds: no defect
        (PROMPT_NAMES[:2], True),  # two prompts: the official code mixes them, as our bug mode does
    ],
)
def test_official_code_equals_this_network_on_the_same_weights(official_repo, names, bug):
    """tiny_net's prompt weights are large enough for a prompt wiring error to show (see the golden README)."""
    ours = tiny_net(official_batch_prompt_bug=bug)
    official = official_network.build_official(official_repo, ours.state_dict(), **TINY).eval()
    image, prompts = torch.rand(2, 3, TINY["img_size"], TINY["img_size"]), batch_prompts(names)
    with torch.no_grad():
        assert _max_diff(official(image, prompts), ours(image, prompts)) <= TOLERANCE


def test_official_training_gradients_equal_this_network(official_repo):
    """The benchmark's training workload computes the same step on both (no dropout, so deterministic)."""
    ours = tiny_net().train()
    weights = {key: value.clone() for key, value in ours.state_dict().items()}  # two models, two sets of leaves
    official = official_network.build_official(official_repo, weights, **TINY).train()
    image, prompts = torch.rand(1, 3, TINY["img_size"], TINY["img_size"]), batch_prompts(PROMPT_NAMES[:1])
    grads = []
    for net in (ours, official):
        seg, cls = net(image, prompts)
        (seg * torch.linspace(-1, 1, seg.numel()).view_as(seg)).sum().add(cls.square().sum()).backward()
        grads.append({name: p.grad for name, p in net.named_parameters()})
    official_grads = convert_official_state_dict(grads[1])
    assert official_grads.keys() == grads[0].keys()
    for name, grad in grads[0].items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert (official_grads[name] - grad).abs().max() / scale <= 1e-3, name
