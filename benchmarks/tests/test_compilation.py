"""benchmarks/compilation.py: ``compile_or_eager`` compiles when it can and falls back to the eager module."""

from __future__ import annotations

import logging

import pytest
import torch

from benchmarks.compilation import compile_or_eager
from bundle.networks.swin_blocks import SwinBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def _broken_backend(graph_module, example_inputs):
    raise RuntimeError("this compiler cannot build kernels here")


def _small_block() -> tuple[SwinBlock, torch.Tensor]:
    torch.manual_seed(0)
    return SwinBlock(12, 3, 4, shift_size=2).eval(), torch.randn(1, 8, 8, 12)


@pytest.mark.parametrize("compile_kwargs", [{"backend": _broken_backend}, {"mode": "no-such-mode"}])
def test_compile_failure_falls_back_to_the_eager_module(caplog, compile_kwargs):
    block, x = _small_block()
    with caplog.at_level(logging.WARNING, logger="benchmarks.compilation"), torch.no_grad():
        result = compile_or_eager(block, x, **compile_kwargs)
    assert result is block
    assert "torch.compile failed, running eager" in caplog.text


def test_compile_success_returns_a_compiled_module_with_the_same_outputs():
    block, x = _small_block()
    with torch.no_grad():
        compiled = compile_or_eager(block, x, backend="eager")
        assert compiled is not block
        torch.testing.assert_close(compiled(x), block(x))
