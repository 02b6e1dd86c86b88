"""PerceptGuide network: fidelity to the official code, shapes, prompts, errors, export."""

from __future__ import annotations

import pytest
import torch

from bundle.networks import PerceptGuide, convert_official_state_dict, load_swin_imagenet
from bundle.networks.wrappers import PromptedSegmenter
from bundle.prompts import DEFAULT_VOCABULARY, PROMPT_KEYS

TINY = {"img_size": 128, "embed_dim": 12, "window_size": 4, "encoder_depths": (2, 2, 2, 2)}
PROMPT_NAMES = [
    {"position": "breast", "task": "segmentation", "mode": "whole", "type": "tumor"},
    {"position": "thyroid", "task": "classification", "mode": "local", "type": "organ"},
    {"position": "head", "task": "segmentation", "mode": "location", "type": "organ"},
]


def batch_prompts(names: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    encoded = [DEFAULT_VOCABULARY.encode(n) for n in names]
    return {key: torch.stack([e[key] for e in encoded]) for key in PROMPT_KEYS}


def tiny_net(seed: int = 0, **overrides) -> PerceptGuide:
    """A small network whose prompt term is large enough to change the outputs (as in the golden fixture)."""
    torch.manual_seed(seed)
    net = PerceptGuide(**{**TINY, **overrides})
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.add_(0.08 * torch.randn_like(param))
            if ".prompt_proj." in name:
                param.normal_()
            elif ".attn.hyper." in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
    return net.eval()


def golden_net(golden: dict, variant: str, **options) -> PerceptGuide:
    """The fixture's network and weights; ``options`` may also override its nominal ``img_size``."""
    config = golden["config"]
    arguments = {
        "img_size": config["img_size"],
        "in_channels": config["in_chans"],
        "embed_dim": config["embed_dim"],
        "encoder_depths": config["encoder_depths"],
        "decoder_depths": config["decoder_depths"],
        "num_heads": config["num_heads"],
        "window_size": config["window_size"],
        "mlp_ratio": config["mlp_ratio"],
        "prompt": variant == "prompt",
    }
    net = PerceptGuide(**{**arguments, **options})
    net.load_state_dict(convert_official_state_dict(golden[variant]["state_dict"], net))
    return net.eval()


@pytest.mark.parametrize("attention_impl", ["fast", "reference"])
@pytest.mark.parametrize(
    "variant, bug, seg_key, cls_key",
    [
        ("prompt", False, "seg_logits_per_sample", "cls_logits_per_sample"),
        ("prompt", True, "seg_logits", "cls_logits"),
        ("plain", False, "seg_logits", "cls_logits"),
    ],
)
def test_reproduces_official_golden_logits(golden, attention_impl, variant, bug, seg_key, cls_key):
    net = golden_net(golden, variant, attention_impl=attention_impl, official_batch_prompt_bug=bug)
    prompts = {key: golden[f"{key}_prompt"] for key in PROMPT_KEYS}
    with torch.no_grad():
        seg, cls = net(golden["image"], prompts)
    assert (seg - golden[variant][seg_key]).abs().max() <= 1e-4
    assert (cls - golden[variant][cls_key]).abs().max() <= 1e-4


def test_golden_fixture_separates_per_sample_from_official_batch_mixing(golden):
    """Guards the test above: the two prompt behaviours really give different logits."""
    fixed = golden["prompt"]
    assert (fixed["seg_logits"] - fixed["seg_logits_per_sample"]).abs().max() > 0.1


@pytest.mark.parametrize("prompt, expected", [(True, 66_288_068), (False, 66_183_236)])
def test_paper_size_parameter_count(prompt, expected):
    net = PerceptGuide(embed_dim=96, prompt=prompt)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_batched_prompts_equal_single_sample_forwards():
    net = tiny_net()
    image = torch.rand(3, 3, 128, 128)
    prompts = batch_prompts(PROMPT_NAMES)
    with torch.no_grad():
        seg, cls = net(image, prompts)
        for i in range(3):
            seg_i, cls_i = net(image[i : i + 1], {k: v[i : i + 1] for k, v in prompts.items()})
            torch.testing.assert_close(seg[i : i + 1], seg_i, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cls[i : i + 1], cls_i, atol=1e-5, rtol=1e-5)


def test_official_batch_prompt_bug_mixes_prompts_across_samples():
    fixed, buggy = tiny_net(), tiny_net(official_batch_prompt_bug=True)
    image = torch.rand(2, 3, 128, 128)
    prompts = batch_prompts(PROMPT_NAMES[:2])
    with torch.no_grad():
        assert (fixed(image, prompts)[0] - buggy(image, prompts)[0]).abs().max() > 1e-3
        single = {k: v[:1] for k, v in prompts.items()}
        torch.testing.assert_close(fixed(image[:1], single)[0], buggy(image[:1], single)[0])


def test_prompts_change_the_outputs():
    net = tiny_net()
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        breast = net(image, batch_prompts(PROMPT_NAMES[:1]))[0]
        thyroid = net(image, batch_prompts(PROMPT_NAMES[1:2]))[0]
    assert (breast - thyroid).abs().max() > 1e-3


def test_one_dimensional_prompts_apply_to_the_whole_batch():
    net = tiny_net()
    image = torch.rand(2, 3, 128, 128)
    names = PROMPT_NAMES[0]
    with torch.no_grad():
        broadcast = net(image, DEFAULT_VOCABULARY.encode(names))
        explicit = net(image, batch_prompts([names, names]))
    torch.testing.assert_close(broadcast[0], explicit[0])


@pytest.mark.parametrize("height, width", [(256, 320), (100, 130), (128, 128)])
def test_any_input_size_gives_seg_logits_of_that_size(height, width):
    net = tiny_net(window_size=7)
    with torch.no_grad():
        seg, cls = net(torch.rand(1, 3, height, width), batch_prompts(PROMPT_NAMES[:1]))
    assert seg.shape == (1, 2, height, width)
    assert cls.shape == (1, 2)


@pytest.mark.parametrize("height, width", [(128, 128), (256, 128)])
def test_fast_attention_equals_reference_attention(height, width):
    fast = tiny_net()
    reference = tiny_net(attention_impl="reference")
    image = torch.rand(2, 3, height, width)
    prompts = batch_prompts(PROMPT_NAMES[:2])
    with torch.no_grad():
        for out_fast, out_ref in zip(fast(image, prompts), reference(image, prompts)):
            torch.testing.assert_close(out_fast, out_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seg_classes, cls_classes", [(4, 3), (1, 5)])
def test_class_counts_set_output_shapes(seg_classes, cls_classes):
    net = tiny_net(seg_classes=seg_classes, cls_classes=cls_classes)
    with torch.no_grad():
        seg, cls = net(torch.rand(2, 3, 128, 128), batch_prompts(PROMPT_NAMES[:2]))
    assert seg.shape == (2, seg_classes, 128, 128)
    assert cls.shape == (2, cls_classes)


def test_extra_organs_grow_the_position_prompt():
    vocabulary = DEFAULT_VOCABULARY.extended(["prostate"])
    net = tiny_net(prompt_sizes=vocabulary.sizes)
    prompts = vocabulary.encode({"position": "prostate", "task": "segmentation", "mode": "whole", "type": "organ"})
    with torch.no_grad():
        seg, _ = net(torch.rand(1, 3, 128, 128), prompts)
    assert prompts["position"].shape == (12,)
    assert seg.shape == (1, 2, 128, 128)


@pytest.mark.parametrize(
    "image_shape, prompt_override, message",
    [
        ((1, 1, 128, 128), {}, r"image must have shape \(B, 3, H, W\)"),
        ((1, 3, 128), {}, r"image must have shape"),
        ((1, 3, 128, 128), {"position": torch.zeros(1, 10)}, r"prompt 'position' must have shape \(1, 11\)"),
        ((2, 3, 128, 128), {"task": torch.zeros(3, 2)}, r"prompt 'task' must have shape \(2, 2\)"),
        ((1, 3, 128, 128), {"mode": None}, r"prompt 'mode' is missing"),
    ],
)
def test_bad_inputs_raise_value_errors_saying_what_was_expected(image_shape, prompt_override, message):
    net = tiny_net()
    prompts = batch_prompts(PROMPT_NAMES[: image_shape[0]])
    for key, value in prompt_override.items():
        if value is None:
            del prompts[key]
        else:
            prompts[key] = value
    with pytest.raises(ValueError, match=message):
        net(torch.rand(*image_shape), prompts)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"embed_dim": 10}, "not divisible by"),
        ({"attention_impl": "flash"}, "(?s)'flash'.*Available options are"),
        ({"prompt_init": "zeros"}, "(?s)'zeros'.*Available options are"),
        ({"patch_embed": "overlapping"}, "(?s)'overlapping'.*Available options are"),
        ({"patch_size": 3, "patch_embed": "conv"}, "power of 2"),
        ({"cache_block_bytes": 0}, "cache_block_bytes must be >= 1"),
        ({"conv_skips": -1}, "conv_skips must be >= 0"),
        ({"patch_size": 3, "conv_skips": 8}, "power of 2"),
    ],
)
def test_invalid_configuration_is_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        PerceptGuide(**{**TINY, **options})


def test_convolution_stem_keeps_the_interface_and_every_other_weight():
    net = tiny_net(patch_embed="conv")
    prompts = batch_prompts(PROMPT_NAMES[:2])
    with torch.no_grad():
        seg, cls = net(torch.rand(2, 3, 100, 130), prompts)
    assert seg.shape == (2, 2, 100, 130) and cls.shape == (2, 2)
    # the decoders and the prompts are untouched: only the stem changes
    official_keys = set(tiny_net().state_dict())
    changed = {key.split(".")[0] + "." + key.split(".")[1] for key in official_keys ^ set(net.state_dict())}
    assert changed == {"patch_embed.convs"}


@pytest.mark.parametrize("height, width", [(128, 128), (100, 130), (256, 64)])
def test_conv_skip_path_gives_seg_logits_of_the_input_size(height, width):
    net = tiny_net(conv_skips=8, seg_classes=3)
    with torch.no_grad():
        seg, cls = net(torch.rand(2, 3, height, width), batch_prompts(PROMPT_NAMES[:2]))
    assert seg.shape == (2, 3, height, width) and cls.shape == (2, 2)


def test_conv_skip_path_adds_its_keys_and_replaces_only_the_final_expansion():
    official = set(PerceptGuide(**TINY).state_dict())
    assert set(PerceptGuide(**TINY, conv_skips=0).state_dict()) == official
    assert not any(key.startswith("conv_skips.") for key in official)
    skipped = set(PerceptGuide(**TINY, conv_skips=8).state_dict())
    head = ("seg_decoder.final_expand.", "seg_decoder.out.")
    assert official - skipped == {key for key in official if key.startswith(head)}
    assert all(key.startswith("conv_skips.") for key in skipped - official)
    assert {key for key in skipped if ".prompt_proj." in key and key.startswith("conv_skips.")} == {
        f"conv_skips.up.{i}.prompt_proj.{p}" for i in (0, 1) for p in ("weight", "bias")
    }


def test_prompts_steer_the_conv_skip_path_through_gains_that_start_neutral():
    image = torch.rand(1, 3, 128, 128)
    tokens = torch.rand(1, 32, 32, TINY["embed_dim"])
    breast, thyroid = batch_prompts(PROMPT_NAMES[:1]), batch_prompts(PROMPT_NAMES[1:2])
    untrained = PerceptGuide(**TINY, conv_skips=8).eval()
    trained = tiny_net(conv_skips=8)
    with torch.no_grad():
        neutral = untrained.conv_skips(image, tokens, breast), untrained.conv_skips(image, tokens, thyroid)
        torch.testing.assert_close(*neutral)
        assert (trained.conv_skips(image, tokens, breast) - trained.conv_skips(image, tokens, thyroid)).abs().max() > 1e-3
        # the whole network: the Swin decoder blocks and the conv gains both take the prompts
        assert (trained(image, breast)[0] - trained(image, thyroid)[0]).abs().max() > 1e-3


def test_window_geometry_lives_on_the_blocks_outside_the_state_dict():
    """Masks, index maps and position indices are non-persistent buffers: they follow ``.to()``
    but official checkpoints (which drop ``attn_mask`` and ``relative_position_index``) still fit."""
    net = PerceptGuide(**TINY)
    buffers = dict(net.named_buffers())
    assert "encoder.0.blocks.1.geometry.shift_mask" in buffers
    assert "seg_decoder.stages.2.blocks.0.attn.relative_position_index" in buffers
    assert not set(buffers) & set(net.state_dict())


def test_unit_prompt_init_lets_the_prompts_reach_the_untrained_outputs():
    image = torch.rand(1, 3, 128, 128)
    both = batch_prompts([dict(PROMPT_NAMES[0], position=organ) for organ in ("breast", "thyroid")])
    breast, thyroid = ({key: value[i : i + 1] for key, value in both.items()} for i in (0, 1))
    prompt_effect = {}
    for init in ("official", "unit"):
        torch.manual_seed(0)
        net = PerceptGuide(**TINY, prompt_init=init).eval()
        hyper = [p for n, p in net.named_parameters() if ".attn.hyper." in n]
        biases = [p for n, p in net.named_parameters() if ".prompt_proj." in n and n.endswith(".bias")]
        if init == "unit":
            assert all(bool((p == 1).all()) for p in hyper + biases)
        else:
            assert all(bool(((p >= 0) & (p < 1)).all()) for p in hyper) and all(not p.any() for p in biases)
        with torch.no_grad():
            prompt_effect[init] = (net(image, breast)[0] - net(image, thyroid)[0]).abs().max().item()
    assert prompt_effect["unit"] > 100 * prompt_effect["official"]
    # the same parameters either way: the unit-init weights load into an official-init network
    official = PerceptGuide(**TINY).eval()
    official.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(official(image, breast)[0], net(image, breast)[0])


def test_converter_lists_missing_and_unexpected_keys(golden):
    official = dict(golden["prompt"]["state_dict"])
    official.pop("swin.norm.weight")
    official["swin.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        convert_official_state_dict(official, golden_net(golden, "prompt"))
    message = str(error.value)
    assert "missing (1): encoder_norm.weight" in message
    assert "unexpected (1): extra.weight" in message


def test_converter_rejects_checkpoint_of_another_architecture(golden):
    plain_net = golden_net(golden, "plain")
    with pytest.raises(ValueError, match=r"unexpected \(\d+\): .*prompt_proj"):
        convert_official_state_dict(golden["prompt"]["state_dict"], plain_net)
    wider = PerceptGuide(embed_dim=48, prompt=False)
    with pytest.raises(ValueError, match=r"shape mismatch \(\d+\): .*checkpoint \(192,\) vs model \(384,\)"):
        convert_official_state_dict(golden["plain"]["state_dict"], wider)


def test_converter_accepts_keys_without_swin_prefix_and_with_ddp_prefix(golden):
    official = golden["plain"]["state_dict"]
    bare = {key.removeprefix("swin."): value for key, value in official.items()}
    ddp = {"module." + key: value for key, value in official.items()}
    assert convert_official_state_dict(bare).keys() == convert_official_state_dict(ddp).keys()


def _write_swin_tiny_checkpoint(path, embed_dim: int, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=4):
    """A checkpoint in Microsoft Swin-T layout (key names and shapes), filled with random values."""
    torch.manual_seed(1)
    state = {
        "patch_embed.proj.weight": torch.randn(embed_dim, 3, 4, 4),
        "patch_embed.proj.bias": torch.randn(embed_dim),
        "patch_embed.norm.weight": torch.randn(embed_dim),
        "patch_embed.norm.bias": torch.randn(embed_dim),
        "head.weight": torch.randn(1000, embed_dim * 8),
        "head.bias": torch.randn(1000),
        "norm.weight": torch.randn(embed_dim * 8),
        "norm.bias": torch.randn(embed_dim * 8),
    }
    for stage, (depth, nh) in enumerate(zip(depths, heads)):
        dim = embed_dim * 2**stage
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}."
            shapes = {
                "norm1.weight": (dim,), "norm1.bias": (dim,),
                "attn.relative_position_bias_table": ((2 * window - 1) ** 2, nh),
                "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
                "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
                "norm2.weight": (dim,), "norm2.bias": (dim,),
                "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
                "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,),
            }  # fmt: skip
            state.update({prefix + name: torch.randn(shape) for name, shape in shapes.items()})
            state[prefix + "attn.relative_position_index"] = torch.zeros(window**4, dtype=torch.long)
        if stage < 3:
            state[f"layers.{stage}.downsample.reduction.weight"] = torch.randn(2 * dim, 4 * dim)
            state[f"layers.{stage}.downsample.norm.weight"] = torch.randn(4 * dim)
            state[f"layers.{stage}.downsample.norm.bias"] = torch.randn(4 * dim)
    torch.save({"model": state}, path)
    return state


def test_swin_imagenet_loader_fills_encoder_and_both_decoders(tmp_path):
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    source = _write_swin_tiny_checkpoint(path, embed_dim=12)
    net = PerceptGuide(**TINY)
    prompt_before = net.seg_decoder.stages[0].blocks[0].prompt_proj.position_prompt.weight.clone()
    report = load_swin_imagenet(net, path)
    state = net.state_dict()
    expectations = {
        "patch_embed.proj.weight": "patch_embed.proj.weight",
        "encoder.2.blocks.1.mlp.linear1.weight": "layers.2.blocks.1.mlp.fc1.weight",
        "encoder.1.resample.reduction.weight": "layers.1.downsample.reduction.weight",
        "encoder_norm.weight": "norm.weight",
        "seg_decoder.stages.0.blocks.1.attn.qkv.weight": "layers.2.blocks.1.attn.qkv.weight",
        "seg_decoder.stages.2.blocks.0.attn.relative_position_bias_table": "layers.0.blocks.0.attn.relative_position_bias_table",
        "cls_decoder.stages.0.blocks.0.norm1.weight": "layers.3.blocks.0.norm1.weight",
        "cls_decoder.stages.2.blocks.1.mlp.linear2.bias": "layers.1.blocks.1.mlp.fc2.bias",
    }
    for model_key, source_key in expectations.items():
        assert report[model_key] == source_key
        torch.testing.assert_close(state[model_key], source[source_key])
    assert "head.weight" in report.skipped and "layers.2.blocks.5.attn.qkv.weight" in report.skipped
    torch.testing.assert_close(net.seg_decoder.stages[0].blocks[0].prompt_proj.position_prompt.weight, prompt_before)


def test_swin_imagenet_loader_rejects_unrelated_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match="no tensor fits"):
        load_swin_imagenet(PerceptGuide(**TINY), path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_swin_imagenet(PerceptGuide(**TINY), tmp_path / "missing.pth")


@pytest.mark.parametrize("options", [{}, {"patch_embed": "conv"}, {"conv_skips": 8}])
def test_torchscript_trace_matches_eager(options):
    net = tiny_net(**options)
    image = torch.rand(2, 3, 128, 128)
    prompts = batch_prompts(PROMPT_NAMES[:2])
    with torch.no_grad():
        traced = torch.jit.trace(net, (image, prompts), check_trace=False)
        for eager, scripted in zip(net(image, prompts), traced(image, prompts)):
            assert (eager - scripted).abs().max() <= 1e-4


def test_onnx_export_matches_eager(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    net = tiny_net()
    image = torch.rand(2, 3, 128, 128)
    prompts = batch_prompts(PROMPT_NAMES[:2])
    path = tmp_path / "perceptguide.onnx"
    # the trailing {} tells the exporter that the prompts dict is a positional argument
    torch.onnx.export(
        net, (image, prompts, {}), path, dynamo=False,
        input_names=["image", *PROMPT_KEYS], output_names=["seg_logits", "cls_logits"],
    )  # fmt: skip
    session = onnxruntime.InferenceSession(str(path))
    feeds = {"image": image.numpy(), **{key: value.numpy() for key, value in prompts.items()}}
    with torch.no_grad():
        eager = net(image, prompts)
    for expected, got in zip(eager, session.run(None, feeds)):
        assert (expected - torch.from_numpy(got)).abs().max() <= 1e-4


def test_prompted_segmenter_fixes_prompts_by_name():
    net = tiny_net()
    wrapper = PromptedSegmenter(net, organ="thyroid", object_type="organ", mode="local", task="classification").eval()
    image = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = net(image, batch_prompts([PROMPT_NAMES[1]] * 2))
        torch.testing.assert_close(wrapper(image), expected[0])
        cls_wrapper = PromptedSegmenter(net, "thyroid", "organ", "local", "classification", output="cls")
        torch.testing.assert_close(cls_wrapper(image), expected[1])
    with pytest.raises(ValueError, match="unknown position prompt 'spleen'"):
        PromptedSegmenter(net, organ="spleen", object_type="organ")
    with pytest.raises(ValueError, match="(?s)'mask'.*Available options are"):
        PromptedSegmenter(net, organ="thyroid", object_type="organ", output="mask")
