"""Performance paths of the network give the reference numbers: fused attention, index-map windows,
fused seg head, oneDNN linear layers without autograd, activation checkpointing, bf16 autocast (as
``PromptInferer`` applies it) and bf16 casts, window geometry of any size and device. No timings here:
benchmarks/benchmark.py measures speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import window_partition

from bundle.networks import dense
from bundle.networks.swin_blocks import PatchExpanding, window_token_order
from bundle.prompts import PROMPT_KEYS
from tests.test_networks import PROMPT_NAMES, batch_prompts, golden_net, tiny_net

# bf16 keeps 8 significant bits: the ~300 roundings from image to logit, adding up like a random
# walk, move a logit margin by about sqrt(300)·2⁻⁸ ≈ 7 % of the largest |logit|, so pixels whose fp32
# margin is twice that keep their class on any CPU. On the golden fixture (|logit| ≤ 2.66, so 0.36)
# margins moved by up to 0.20 with native bf16 (AVX-512 BF16) and 0.27 with ATen's AVX2 kernels
# (ATEN_CPU_CAPABILITY=avx2: 99.46 % of the masks equal, as on the AVX2-only CPU); flips ≤ 0.17.
BF16_STABLE_MARGIN = 2 * 300**0.5 * 2**-8


pytestmark = pytest.mark.usefixtures("one_thread")


def golden_prompts(golden: dict) -> dict[str, torch.Tensor]:
    return {key: golden[f"{key}_prompt"] for key in PROMPT_KEYS}


@pytest.mark.parametrize("height, width, window, shift", [(56, 56, 7, 3), (28, 14, 7, 3), (16, 24, 4, 2), (14, 14, 7, 0)])
def test_window_token_order_equals_roll_then_partition_and_inverts(height, width, window, shift):
    x = torch.randn(2, height, width, 5)
    gather, scatter = window_token_order(height, width, window, shift, x.device)
    rolled = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    expected = window_partition(rolled, (window, window)).reshape(2, height * width, 5)
    gathered = x.reshape(2, height * width, 5).index_select(1, gather)
    assert torch.equal(gathered, expected)
    assert torch.equal(gathered.index_select(1, scatter), x.reshape(2, height * width, 5))


@pytest.mark.parametrize("scale, classes", [(4, 2), (2, 5)])
def test_seg_head_projection_equals_expand_then_1x1_convolution(scale, classes):
    torch.manual_seed(0)
    expand = PatchExpanding(12, 12, scale=scale)
    conv = torch.nn.Conv2d(12, classes, kernel_size=1, bias=False)
    x = torch.randn(2, 5, 7, 12)
    expected = conv(expand(x).permute(0, 3, 1, 2))
    torch.testing.assert_close(expand.project(x, conv.weight.flatten(1)), expected, atol=1e-5, rtol=1e-5)


def _ran(fn, operator: str) -> bool:
    """Whether ``fn()`` called ``operator`` (a profiler event name such as ``"aten::split"``)."""
    with torch.profiler.profile() as profile:
        fn()
    return any(event.name == operator for event in profile.events())


def _ran_onednn(fn) -> bool:
    """Whether ``fn()`` called oneDNN's pointwise linear operator."""
    return _ran(fn, "mkldnn::_linear_pointwise")


@pytest.mark.skipif(not dense.onednn_linear_available(), reason="this PyTorch build has no oneDNN linear")
@pytest.mark.parametrize("bias, gelu", [(True, False), (False, False), (True, True)])
def test_onednn_linear_serves_forwards_without_autograd_with_the_numbers_of_f_linear(bias, gelu):
    torch.manual_seed(0)
    x, weight = torch.randn(3, 50, 24), torch.randn(96, 24)
    bias_vector = torch.randn(96) if bias else None
    expected = F.linear(x, weight, bias_vector)
    expected = F.gelu(expected) if gelu else expected
    with torch.no_grad():
        assert _ran_onednn(lambda: dense.linear(x, weight, bias_vector, gelu=gelu))
        torch.testing.assert_close(dense.linear(x, weight, bias_vector, gelu=gelu), expected, atol=1e-5, rtol=1e-5)
    # the operator has no backward: with autograd the same call is F.linear's
    weight.requires_grad_(True)
    assert not _ran_onednn(lambda: dense.linear(x, weight, bias_vector, gelu=gelu).sum().backward())
    assert weight.grad is not None


@pytest.mark.skipif(not dense.onednn_linear_available(), reason="this PyTorch build has no oneDNN linear")
def test_fast_path_without_autograd_runs_onednn_and_keeps_its_numbers():
    image = torch.rand(2, 3, 128, 96)
    prompts = batch_prompts(PROMPT_NAMES[:2])
    net, mkl = tiny_net(), tiny_net(onednn_linear=False)
    with torch.inference_mode():
        assert _ran_onednn(lambda: net(image, prompts))
        fast = net(image, prompts)
        assert not _ran_onednn(lambda: mkl(image, prompts))
        plain = mkl(image, prompts)
    for got, expected in zip(fast, plain):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget", [1, 700])
def test_cache_blocks_give_the_numbers_of_one_block(budget):
    """MLPs and the seg head run in token blocks (here one token or row each, or a few with a
    remainder): same outputs in inference and same gradients in training as with each map in one block."""
    image = torch.rand(2, 3, 128, 96)
    prompts = batch_prompts(PROMPT_NAMES[:2])
    whole_net, blocked_net = tiny_net(cache_block_bytes=2**62), tiny_net(cache_block_bytes=budget)
    with torch.no_grad():
        # the budget reaches the blocks: only then are maps split
        assert _ran(lambda: blocked_net(image, prompts), "aten::split")
        assert not _ran(lambda: whole_net(image, prompts), "aten::split")
        whole, blocked = whole_net(image, prompts), blocked_net(image, prompts)
    loss_whole, grads_whole = _loss_and_grads(tiny_net(cache_block_bytes=2**62), image, prompts)
    loss_blocked, grads_blocked = _loss_and_grads(tiny_net(cache_block_bytes=budget), image, prompts)
    for got, expected in zip(blocked, whole):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_blocked, loss_whole, atol=1e-4, rtol=1e-5)
    assert grads_blocked.keys() == grads_whole.keys()
    for name, grad in grads_whole.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert (grads_blocked[name] - grad).abs().max() / scale <= 1e-4, name


@pytest.mark.parametrize("variant, bug", [("prompt", False), ("prompt", True), ("plain", False)])
def test_fast_path_equals_reference_path_on_golden_fixture(golden, variant, bug):
    """Fast and reference paths of the same weights agree to 1e-4 (each also matches the official logits)."""
    image, prompts = golden["image"], golden_prompts(golden)
    with torch.no_grad():
        fast = golden_net(golden, variant, official_batch_prompt_bug=bug)(image, prompts)
        reference = golden_net(golden, variant, official_batch_prompt_bug=bug, attention_impl="reference")(image, prompts)
    for got, expected in zip(fast, reference):
        assert (got - expected).abs().max() <= 1e-4


def _loss_and_grads(net: torch.nn.Module, image: torch.Tensor, prompts: dict) -> tuple[torch.Tensor, dict]:
    net.train()
    seg, cls = net(image, prompts)
    # a loss that weighs every logit differently, so no gradient cancels out
    weights = torch.linspace(-1, 1, seg.numel()).view_as(seg)
    loss = (seg * weights).sum() + cls.square().sum()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "options", [{}, {"use_checkpoint": True}, {"official_batch_prompt_bug": True}, {"qkv_bias": False}]
)
def test_training_gradients_of_fast_paths_equal_reference(options):
    """The fast path's backward (reduced prompted projection, SDPA, index maps) gives the reference gradients."""
    image = torch.rand(2, 3, 128, 128)
    prompts = batch_prompts(PROMPT_NAMES[:2])
    reference_options = {**options, "use_checkpoint": False}
    loss_ref, grads_ref = _loss_and_grads(tiny_net(attention_impl="reference", **reference_options), image, prompts)
    loss_fast, grads_fast = _loss_and_grads(tiny_net(**options), image, prompts)
    torch.testing.assert_close(loss_fast, loss_ref, atol=1e-3, rtol=1e-4)
    assert grads_fast.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert (grads_fast[name] - grad).abs().max() / scale <= 1e-3, name


@pytest.mark.parametrize("height, width", [(256, 256), (384, 384)])
def test_geometry_of_other_sizes_equals_that_built_for_them(height, width):
    """A network built for 128² computes the window geometry of another input size on first use;
    its logits equal those of the same weights built for that size (whose geometry is buffers)."""
    image = torch.rand(1, 3, height, width)
    prompts = batch_prompts(PROMPT_NAMES[:1])
    net = tiny_net()
    sized = tiny_net(img_size=max(height, width))
    sized.load_state_dict(net.state_dict())
    with torch.no_grad():
        for got, expected in zip(net(image, prompts), sized(image, prompts)):
            assert torch.equal(got, expected)


def test_geometry_built_under_inference_mode_serves_training():
    """The geometry of a size other than the nominal one is kept per block once built; made during
    an evaluation under inference mode, it must not break a later backward pass."""
    net = tiny_net()
    image = torch.rand(1, 3, 128, 256)
    prompts = batch_prompts(PROMPT_NAMES[:1])
    with torch.inference_mode():
        net(image, prompts)
    _, grads = _loss_and_grads(net, image, prompts)
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_network_built_under_inference_mode_leaves_later_networks_trainable():
    """Each network builds its own geometry: nothing made under inference mode reaches the next one."""
    with torch.inference_mode():
        tiny_net(window_size=5)
    _, grads = _loss_and_grads(tiny_net(window_size=5), torch.rand(1, 3, 160, 160), batch_prompts(PROMPT_NAMES[:1]))
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("device, dtype", [("meta", torch.float32), ("cpu", torch.float64)])
def test_network_moved_with_to_takes_its_geometry_along(device, dtype):
    """Geometry buffers follow ``.to(device)`` (the meta device stands in for an accelerator) and
    a float cast, at the nominal size and at another one."""
    net = tiny_net().to(device=device, dtype=dtype)
    prompts = {key: value.to(device, dtype) for key, value in batch_prompts(PROMPT_NAMES[:1]).items()}
    for height, width in [(128, 128), (96, 200)]:
        with torch.no_grad():
            seg, cls = net(torch.rand(1, 3, height, width).to(device, dtype), prompts)
        assert (seg.device.type, seg.dtype, seg.shape) == (device, dtype, (1, 2, height, width))
    assert net.encoder[0].blocks[1].geometry.shift_mask.dtype == dtype


def assert_bf16_keeps_confident_pixels(seg: torch.Tensor, fp32: torch.Tensor) -> None:
    """bf16 seg logits give the fp32 mask on every pixel whose fp32 margin bf16 cannot overturn."""
    assert seg.dtype == torch.bfloat16  # bf16 really ran
    top = fp32.topk(2, dim=1).values
    confident = top[:, 0] - top[:, 1] > BF16_STABLE_MARGIN * fp32.abs().max()
    assert confident.float().mean() > 0.5  # the check covers most pixels of the fixture
    changed = seg.float().argmax(1) != fp32.argmax(1)
    assert not (changed & confident).any(), f"{int((changed & confident).sum())} confident pixels changed class"


@pytest.mark.parametrize("attention_impl", ["fast", "reference"])
def test_bf16_autocast_keeps_segmentation_masks_of_official_logits(golden, attention_impl):
    """Explicit bf16 autocast, so it runs on any CPU (PromptInferer enables it only with native bf16)."""
    net = golden_net(golden, "prompt", attention_impl=attention_impl)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        seg, _ = net(golden["image"], golden_prompts(golden))
    assert_bf16_keeps_confident_pixels(seg, golden["prompt"]["seg_logits_per_sample"])


@pytest.mark.parametrize("img_size", [224, 448])
@pytest.mark.parametrize("attention_impl", ["fast", "reference"])
def test_network_cast_to_bf16_keeps_segmentation_masks_of_official_logits(golden, attention_impl, img_size):
    """bf16 weights and activations (``net.to(torch.bfloat16)``), no autocast. With ``img_size``
    448 the 224² fixture's shift masks are built on first use in fp32: they must follow the bias
    dtype in shifted prompted blocks (a dtype error there once stopped every bf16 network)."""
    net = golden_net(golden, "prompt", attention_impl=attention_impl, img_size=img_size).to(torch.bfloat16)
    prompts = {key: value.to(torch.bfloat16) for key, value in golden_prompts(golden).items()}
    with torch.inference_mode():
        seg, cls = net(golden["image"].to(torch.bfloat16), prompts)
    assert cls.dtype == torch.bfloat16
    assert_bf16_keeps_confident_pixels(seg, golden["prompt"]["seg_logits_per_sample"])


def test_bf16_autocast_training_keeps_fp32_master_weights_and_gradients():
    net = tiny_net().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seg, cls = net(torch.rand(1, 3, 128, 128), batch_prompts(PROMPT_NAMES[:1]))
        loss = seg.float().square().mean() + cls.float().square().mean()
    loss.backward()
    assert seg.dtype == torch.bfloat16
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
