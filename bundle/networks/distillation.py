"""A frozen teacher beside a compact student, their stage features aligned (after TransKD).

TransKD (Liu et al., "Transformer knowledge distillation for efficient semantic segmentation")
distils a transformer's feature maps and patch embeddings, not only its logits: each student
stage's tokens go through a learnt linear map to the teacher's width and are pulled towards the
teacher's tokens of the same stage, coarser stages weighted more (0.1 / 0.1 / 0.5 / 1).

:class:`DistillationNetwork` is the training-time view that makes this possible: in training it
returns the student's outputs and, beside them, the teacher's outputs and every aligned pair of
stage features (:class:`TeacherSignals`); in eval mode it is the student alone, so validation,
checkpoints and exports see only the student.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bundle.networks.perceptguide import PerceptGuide

__all__ = ["DISTILLED_STAGES", "LEVEL_WEIGHTS", "StageOutputs", "TeacherSignals", "DistillationNetwork"]

# the modules whose outputs are distilled: the patch embedding, every encoder stage and every stage of both decoders
DISTILLED_STAGES = re.compile(r"^(patch_embed|encoder\.\d+|seg_decoder\.stages\.\d+|cls_decoder\.stages\.\d+)$")
# TransKD's stage weights, finest level first; a map of level l (side = level-0 side / 2^l) takes LEVEL_WEIGHTS[l]
LEVEL_WEIGHTS = (0.1, 0.1, 0.5, 1.0)


class StageOutputs:
    """Forward hooks that keep the outputs of a network's :data:`DISTILLED_STAGES`, in module order.

    Args:
        network: the PerceptGuide whose stages are read.
    """

    def __init__(self, network: nn.Module) -> None:
        self.names = [name for name, _ in network.named_modules() if DISTILLED_STAGES.match(name)]
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(network.named_modules())
        for name in self.names:
            modules[name].register_forward_hook(self._keeper(name))

    def _keeper(self, name: str):
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.outputs[name] = output

        return keep

    def take(self) -> list[torch.Tensor]:
        """The last forward's stage outputs, channels last (B, h, w, C) each, in :attr:`names` order; then forgotten."""
        missing = [name for name in self.names if name not in self.outputs]
        if missing:
            raise RuntimeError(f"no output was recorded for {missing}")
        taken = [self.outputs[name] for name in self.names]
        self.outputs.clear()
        return taken


@dataclass
class TeacherSignals:
    """What the student learns from, beside its labels.

    Args:
        seg: teacher seg logits (B, K, H, W).
        cls: teacher cls logits (B, M).
        student_features: the student's stage tokens mapped to the teacher's width, (B, h, w, C_t) each.
        teacher_features: the teacher's tokens of the same stages, same shapes.
        weights: one weight per stage (:data:`LEVEL_WEIGHTS` by the stage's level).
    """

    seg: torch.Tensor
    cls: torch.Tensor
    student_features: list[torch.Tensor]
    teacher_features: list[torch.Tensor]
    weights: list[float]


class DistillationNetwork(nn.Module):
    """A student PerceptGuide trained beside a frozen teacher, with linear maps between their stages.

    The two networks must share the stage layout (patch size, number of levels, both decoders)
    and take the same input size, so that every distilled stage has the same map size in both;
    widths, depths, heads, window and the convolutional skip path may differ. In training mode
    ``forward`` returns ``(seg, cls, TeacherSignals)``; in eval mode the student's ``(seg, cls)``.

    The teacher is held, not registered as a submodule: it stays in eval mode (no dropout, batch
    norms frozen), outside autograd, the optimizer and this module's state dict, which holds the
    student (``student.*``) and the maps (``maps.*``); :meth:`to` moves it too.

    Args:
        student: the network that learns (what checkpoints hold).
        teacher: the trained network; its parameters are frozen here.
        level_weights: feature weight per level, finest first; deeper levels take the last one.
        mirrored_teacher: the teacher's logits are the mean of those of the image and of its
            left-right mirror (seg mirrored back), as ``test_time_flip`` infers; its stage features
            stay the plain view's. One more teacher forward per batch.

    Raises:
        ValueError: the two networks' stages differ in number or map size, or their prompt
            vocabularies or class counts differ (naming the first mismatch).
    """

    def __init__(
        self,
        student: PerceptGuide,
        teacher: PerceptGuide,
        level_weights: Sequence[float] = LEVEL_WEIGHTS,
        mirrored_teacher: bool = False,
    ) -> None:
        super().__init__()
        self.mirrored_teacher = bool(mirrored_teacher)
        for name in ("prompt_sizes", "img_size", "in_channels"):
            if getattr(student, name) != getattr(teacher, name):
                raise ValueError(
                    f"student and teacher must have the same {name}: {getattr(student, name)} vs {getattr(teacher, name)}"
                )
        self.student = student
        # a plain attribute: nn.Module would register it, and train(), parameters() and state_dict() would reach it
        object.__setattr__(self, "teacher", teacher.requires_grad_(False).eval())
        self.student_stages = StageOutputs(student)
        self.teacher_stages = StageOutputs(teacher)
        if self.student_stages.names != self.teacher_stages.names:
            raise ValueError(
                "student and teacher need the same stages (patch size, levels, decoders): "
                f"{self.student_stages.names} vs {self.teacher_stages.names}"
            )
        student_shapes, teacher_shapes = self._probe_shapes()
        self.maps = nn.ModuleList()
        self.weights: list[float] = []
        finest = teacher_shapes[0][0]
        for name, (s_side, s_width), (t_side, t_width) in zip(self.student_stages.names, student_shapes, teacher_shapes):
            if s_side != t_side:
                raise ValueError(f"stage {name}: student map {s_side} vs teacher map {t_side}; use the teacher's input size")
            self.maps.append(nn.Linear(s_width, t_width))
            level = round(math.log2(finest[0] / t_side[0]))
            self.weights.append(float(level_weights[min(level, len(level_weights) - 1)]))

    @torch.no_grad()
    def _probe_shapes(self) -> tuple[list, list]:
        """((map side (h, w), width) per stage) of the student and of the teacher, from one nominal-size forward."""
        side = self.teacher.img_size
        image = torch.zeros(1, self.teacher.in_channels, side, side, device=next(self.teacher.parameters()).device)
        prompts = {key: torch.zeros(1, size, device=image.device) for key, size in self.teacher.prompt_sizes.items()}
        shapes = []
        for network, stages in ((self.student, self.student_stages), (self.teacher, self.teacher_stages)):
            was_training = network.training
            network.eval()
            network(image.to(next(network.parameters()).device), prompts or None)
            network.train(was_training)
            shapes.append([(tuple(out.shape[1:3]), out.shape[-1]) for out in stages.take()])
        return shapes[0], shapes[1]

    def to(self, *args: Any, **kwargs: Any) -> DistillationNetwork:
        """``nn.Module.to`` for the student and maps, and the same move for the teacher."""
        self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def forward(
        self, image: torch.Tensor, prompts: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, TeacherSignals]:
        """
        Args:
            image: (B, C, H, W); prompts as :meth:`PerceptGuide.forward` takes them.

        Returns:
            the student's seg logits (B, K, H, W) and cls logits (B, M) and, in training, the
            :class:`TeacherSignals`.
        """
        if not self.training:
            return self.student(image, prompts)
        with torch.no_grad():
            teacher_seg, teacher_cls = self.teacher(image, prompts)
            teacher_features = self.teacher_stages.take()
            if self.mirrored_teacher:
                mirrored_seg, mirrored_cls = self.teacher(torch.flip(image, dims=(-1,)), prompts)
                self.teacher_stages.take()
                teacher_seg = (teacher_seg + torch.flip(mirrored_seg, dims=(-1,))) / 2
                teacher_cls = (teacher_cls + mirrored_cls) / 2
        seg, cls = self.student(image, prompts)
        mapped = [projection(tokens) for projection, tokens in zip(self.maps, self.student_stages.take())]
        return seg, cls, TeacherSignals(teacher_seg, teacher_cls, mapped, teacher_features, self.weights)
