"""Run the official PerceptGuide network code (github.com/Zehui-Lin/PerceptGuide) beside this bundle.

Nothing of the official code is copied here: ``networks/omni_vision_transformer.py`` is read from
a checkout, or from a git directory without work tree (``git show``), and executed as a private
module. Its third-party imports are served by small stand-ins, installed in ``sys.modules`` only
while that module executes (so nothing else in the process sees them):

- ``timm.models.layers``: MONAI's ``DropPath`` and ``trunc_normal_`` (ports of timm's, the same
  math) and ``to_2tuple``; timm itself would pull in another torch.
- ``datasets.omni_dataset``: only its four prompt one-hot dicts, parsed from the official file with
  ``ast`` (the real module imports cv2 and the training data code), and checked to equal
  ``bundle.prompts.DEFAULT_VOCABULARY``, whose encodings the official network is then fed.
- ``einops``: the real package when installed (the ``bench`` extra has it); otherwise a stand-in
  for the one ``rearrange`` pattern the official file uses, and nothing else.

:func:`build_official` gives the official ``SwinTransformer`` holding the weights of one of our
:class:`~bundle.networks.PerceptGuide` networks (``to_official_state_dict``), behind the call
signature of ours, so the benchmark and the tests drive both alike.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import inspect
import linecache
import subprocess
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bundle.networks.checkpoints import to_official_state_dict
from bundle.prompts import DEFAULT_VOCABULARY, PROMPT_KEYS

NETWORK_FILE = "networks/omni_vision_transformer.py"
DATASET_FILE = "datasets/omni_dataset.py"
# official dict name per prompt key; the official forward takes the prompts in PROMPT_KEYS order
PROMPT_DICTS = {
    "position": "position_prompt_one_hot_dict",
    "task": "task_prompt_one_hot_dict",
    "mode": "mode_prompt_one_hot_dict",
    "type": "type_prompt_one_hot_dict",
}
REARRANGE_PATTERN = "b h w (p1 p2 c)-> b (h p1) (w p2) c"


@dataclass(frozen=True)
class OfficialCode:
    """The executed official network module and where it came from."""

    module: types.ModuleType
    source: str  # "<path> @ <commit>"
    einops: str  # "einops <version>" or the stand-in


def read_official_sources(repo: str | Path) -> tuple[dict[str, str], str]:
    """Text of the two official files and their commit.

    ``repo`` is a checkout (files read from the work tree) or a git directory without one, such
    as a mirror (files read from ``HEAD`` with ``git show``).

    Raises:
        FileNotFoundError: when ``repo`` is neither, or lacks one of the files.
    """
    repo = Path(repo)
    if (repo / NETWORK_FILE).is_file():
        missing = [name for name in (NETWORK_FILE, DATASET_FILE) if not (repo / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{repo} is a PerceptGuide checkout without {missing}")
        texts = {name: (repo / name).read_text() for name in (NETWORK_FILE, DATASET_FILE)}
        git = ["git", "-C", str(repo)]
    else:
        git = ["git", f"--git-dir={repo}"]
        texts = {}
        for name in (NETWORK_FILE, DATASET_FILE):
            shown = subprocess.run([*git, "show", f"HEAD:{name}"], capture_output=True, text=True)
            if shown.returncode != 0:
                raise FileNotFoundError(
                    f"official repo {repo}: neither a PerceptGuide checkout nor a git directory holding {name} "
                    f"({shown.stderr.strip() or 'git show failed'})"
                )
            texts[name] = shown.stdout
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return texts, commit or "work tree"


def official_prompt_dicts(dataset_source: str) -> dict[str, dict[str, list[int]]]:
    """The four prompt one-hot dicts of the official ``omni_dataset.py``, by prompt key, without running it."""
    found = {}
    for node in ast.parse(dataset_source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
    missing = [name for name in PROMPT_DICTS.values() if name not in found]
    if missing:
        raise ValueError(f"official {DATASET_FILE} has no {missing}")
    return {key: ast.literal_eval(found[name]) for key, name in PROMPT_DICTS.items()}


def check_vocabulary(dicts: Mapping[str, Mapping[str, list[int]]]) -> None:
    """Raise unless the official one-hot dicts equal ours name for name (the benchmark feeds ours)."""
    for key, table in dicts.items():
        ours = {name: DEFAULT_VOCABULARY.one_hot(key, name).int().tolist() for name in DEFAULT_VOCABULARY.names(key)}
        if dict(table) != ours:
            raise ValueError(f"official {key} prompt one-hots {dict(table)} differ from bundle.prompts {ours}")


def to_2tuple(value):
    """timm's ``to_2tuple``: an iterable (not a string) as a tuple, anything else twice."""
    if isinstance(value, Iterable) and not isinstance(value, str):
        return tuple(value)
    return (value, value)


def rearrange_stand_in(x: torch.Tensor, pattern: str, p1: int, p2: int, c: int) -> torch.Tensor:
    """einops ``rearrange`` for the official patch-expanding pattern only: what einops runs for it."""
    if " ".join(pattern.split()) != " ".join(REARRANGE_PATTERN.split()):
        raise NotImplementedError(
            f"the einops stand-in knows only {REARRANGE_PATTERN!r}, got {pattern!r}: pip install einops"
        )
    b, h, w, _ = x.shape
    return x.reshape(b, h, w, p1, p2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * p1, w * p2, c)


def _stand_ins(dicts: Mapping[str, Mapping[str, list[int]]]) -> tuple[dict[str, types.ModuleType], str]:
    """Modules to serve the official imports, and which einops they use."""
    from monai.networks.layers import DropPath, trunc_normal_

    def module(name: str, **attributes) -> types.ModuleType:
        made = types.ModuleType(name)
        made.__dict__.update(attributes)
        return made

    layers = module("timm.models.layers", DropPath=DropPath, trunc_normal_=trunc_normal_, to_2tuple=to_2tuple)
    dataset = module("datasets.omni_dataset", **{PROMPT_DICTS[key]: table for key, table in dicts.items()})
    modules = {
        "timm": module("timm", models=module("timm.models", layers=layers)),
        "timm.models.layers": layers,
        "datasets": module("datasets", omni_dataset=dataset),
        "datasets.omni_dataset": dataset,
    }
    modules["timm.models"] = modules["timm"].models
    if importlib.util.find_spec("einops") is not None:
        import einops

        return modules, f"einops {einops.__version__}"
    modules["einops"] = module("einops", rearrange=rearrange_stand_in)
    return modules, "einops stand-in (einops not installed)"


@contextlib.contextmanager
def installed_modules(modules: Mapping[str, types.ModuleType]) -> Iterator[None]:
    """``sys.modules`` holds ``modules`` inside the block only; what was there before comes back."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


@functools.lru_cache(maxsize=None)
def load_official(repo: str) -> OfficialCode:
    """Execute the official network file of ``repo`` (once per process) with the stand-ins above."""
    texts, commit = read_official_sources(repo)
    dicts = official_prompt_dicts(texts[DATASET_FILE])
    check_vocabulary(dicts)
    modules, einops_used = _stand_ins(dicts)
    filename = f"{repo}/{NETWORK_FILE}"
    text = texts[NETWORK_FILE]
    # tracebacks through the official code then show its lines although no file holds them here
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    module = types.ModuleType("perceptguide_official")
    module.__file__ = filename
    with installed_modules(modules):
        exec(compile(text, filename, "exec"), module.__dict__)
    return OfficialCode(module, f"{repo} @ {commit}", einops_used)


def official_config(**options) -> dict:
    """Official ``SwinTransformer`` arguments of the network ``PerceptGuide(**options)``.

    Our defaults fill what ``options`` leaves out. Options the official network lacks
    (``attention_impl``, ``official_batch_prompt_bug``: it always mixes prompts across a batch)
    are ignored; those it cannot express raise a ValueError.
    """
    from bundle.networks import PerceptGuide

    ours = {name: parameter.default for name, parameter in inspect.signature(PerceptGuide).parameters.items()}
    ours.update(options)
    if ours["seg_classes"] != 2 or ours["cls_classes"] != 2:
        raise ValueError("the official network has 2 seg and 2 cls classes")
    if ours["prompt_sizes"] not in (None, DEFAULT_VOCABULARY.sizes):
        raise ValueError("the official network has the official prompt sizes only")
    return {
        "img_size": ours["img_size"],
        "patch_size": ours["patch_size"],
        "in_chans": ours["in_channels"],
        "embed_dim": ours["embed_dim"],
        "encoder_depths": list(ours["encoder_depths"]),
        "decoder_depths": list(ours["decoder_depths"]),
        "num_heads": list(ours["num_heads"]),
        "window_size": ours["window_size"],
        "mlp_ratio": ours["mlp_ratio"],
        "qkv_bias": ours["qkv_bias"],
        "qk_scale": None,
        "drop_rate": ours["drop_rate"],
        "attn_drop_rate": ours["attn_drop_rate"],
        "drop_path_rate": ours["drop_path_rate"],
        "ape": False,
        "patch_norm": True,
        "use_checkpoint": ours["use_checkpoint"],
        "prompt": ours["prompt"],
    }


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside the block get meta (storage-less) parameters but real buffers.

    The official model then costs no memory of its own init before it takes our weights, so the
    peak RSS the benchmark reports is that of one model, as on the other paths.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        register(module, name, parameter)
        if parameter is not None:
            module._parameters[name] = nn.Parameter(parameter.to("meta"), requires_grad=parameter.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


class OfficialPerceptGuide(nn.Module):
    """The official ``SwinTransformer`` called like :class:`~bundle.networks.PerceptGuide`.

    ``forward(image, prompts)`` passes the tuple ``(image, position, task, mode, type)`` the
    official forward takes (without prompts: the image). The attribute is named ``swin`` as in the
    official ``OmniVisionTransformer``, so ``state_dict()`` has the official checkpoint keys.
    """

    def __init__(self, swin: nn.Module) -> None:
        super().__init__()
        self.swin = swin

    def forward(self, image: torch.Tensor, prompts: Mapping[str, torch.Tensor] | None = None):
        if not self.swin.prompt:
            return self.swin(image)
        return self.swin((image, *(prompts[key] for key in PROMPT_KEYS)))


def build_official(repo: str | Path, state_dict: Mapping[str, torch.Tensor], **options) -> OfficialPerceptGuide:
    """The official network of ``PerceptGuide(**options)`` holding ``state_dict`` (ours, not copied).

    The tensors of ``state_dict`` become the official parameters (assigned, so the caller's
    network may be dropped without doubling memory).
    """
    code = load_official(str(Path(repo).expanduser().resolve()))
    # the official constructor prints a banner; stdout stays the benchmark worker's result channel
    with parameters_on_meta(), contextlib.redirect_stdout(sys.stderr):
        swin = code.module.SwinTransformer(**official_config(**options))
    model = OfficialPerceptGuide(swin)
    model.load_state_dict(to_official_state_dict(state_dict, model.state_dict()), assign=True)
    return model
