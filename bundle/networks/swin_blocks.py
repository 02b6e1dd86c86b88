"""2D Swin Transformer pieces for PerceptGuide, with prompt-guided ("hyper-perception") attention.

Feature maps stay channels-last, ``(B, H, W, C)``, from the patch embedding to the last decoder
stage, so LayerNorm and the Linear layers work on them without permutes. MONAI's Swin helpers
(``window_partition``, ``window_reverse``, ``compute_mask``, ``PatchMergingV2``, ``MLPBlock``,
``DropPath``) are reused; what MONAI lacks (the prompted attention, patch expanding, channel
halving) is written here.

Hyper-perception (PerceptGuide): each prompted block projects the four one-hot prompts to
``b_k = Linear_k(prompt_k)`` and owns four vectors ``a_k``; the official attention logits are
``(q * scale) W kᵀ`` with ``W = ⊙_k (a_k ⊗ b_k)`` per head. ``W`` is an elementwise product of
outer products, hence rank one, ``W = a bᵀ`` with ``a = ⊙ a_k`` and ``b = ⊙ b_k``, so
``q W kᵀ = (q·a)(k·b)ᵀ``: the fast path never builds the ``head_dim²`` matrix. It does not build
q and k either: ``q·a`` and ``k·b`` are linear in the tokens, so ``a`` and ``b`` are folded into
the q and k rows of the qkv weight, and a prompted block projects each token to ``C + 2·heads``
values instead of ``3·C``.

Two computation paths, selected by ``attention_impl``:

- ``"fast"``: the above, ``scaled_dot_product_attention`` on 4-D ``(B·nW, heads, N, d)`` views
  for unprompted blocks, windows gathered with one ``index_select`` whose index map (cyclic
  shift included) each block keeps for its map size (:class:`WindowGeometry`), and the MLPs and
  the seg head run over blocks of tokens small enough for their widest intermediate to stay in
  cache (:func:`in_cache_blocks`).
- ``"reference"``: the official order of operations (``torch.roll``, window partition, explicit
  ``q W kᵀ`` with the ``d × d`` matrix per head, softmax, window reverse), kept as the
  official-equivalent baseline for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import MLPBlock
from monai.networks.layers import DropPath, trunc_normal_
from monai.networks.nets.swin_unetr import compute_mask, window_partition, window_reverse
from monai.utils import look_up_option
from torch import nn
from torch.utils.checkpoint import checkpoint

from bundle.networks import dense
from bundle.prompts import prompt_field

ATTENTION_IMPLS = ("fast", "reference")
# Token-wise work on large maps runs in blocks whose widest intermediate (the MLP hidden layer,
# the seg head's expanded sub-pixels) has about this size, so that it stays in cache between the
# GEMM that writes it and the ops that read it (docs/performance.md).
DEFAULT_CACHE_BLOCK_BYTES = 2 << 20
# map sizes other than the nominal one whose window geometry a block keeps
OTHER_SIZES_KEPT = 8


def in_cache_blocks(
    fn: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, bytes_per_token: int, budget: int
) -> torch.Tensor:
    """Apply ``fn`` to blocks of ``tokens`` along dim 0 and concatenate the results along dim 0.

    ``fn`` must treat the entries along dim 0 independently (LayerNorm, Linear, GELU do); the
    result is then the same as ``fn(tokens)``. ``bytes_per_token`` is the size of ``fn``'s widest
    intermediate per entry, ``budget`` the bytes of that intermediate per block. Under
    ``torch.compile``, one block.
    """
    step = max(1, budget // bytes_per_token)
    # under torch.compile the map stays whole: inductor fuses the element-wise ops into its own
    # kernels, and Python-level blocks would be unrolled into its graph
    if tokens.shape[0] <= step or torch.compiler.is_compiling():
        return fn(tokens)
    return torch.cat([fn(block) for block in tokens.split(step)])


def window_token_order(
    height: int, width: int, window: int, shift: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token index maps between a raster (H·W) map and its shifted windows.

    ``tokens.index_select(1, gather)`` equals ``window_partition(torch.roll(x, (-shift, -shift)))``
    flattened to (B, nW·N, C), windows in MONAI's order; ``index_select(1, scatter)`` undoes it.
    One gather replaces a roll and a permuted copy (each a full pass over the map) per direction.

    Returns:
        gather, scatter: int64 (H·W,) each.
    """
    raster = torch.arange(height * width, device=device).view(height, width)
    if shift:
        raster = torch.roll(raster, shifts=(-shift, -shift), dims=(0, 1))
    gather = raster.view(height // window, window, width // window, window).transpose(1, 2).reshape(-1)
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(gather.numel(), device=device)
    return gather, scatter


def relative_position_index(window: int) -> torch.Tensor:
    """Index (N, N), N = window², into the ((2·window − 1)², heads) relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


class WindowGeometry(nn.Module):
    """Shift mask and token index maps of one block's (shifted) windows over a (H, W) map.

    The maps of the map size the block sees at the network's nominal input size are
    non-persistent buffers built here, as timm's ``attn_mask``: they follow ``.to(device/dtype)``
    and stay out of the state dict. The maps of other sizes are built on first use and kept per
    size and device (at most :data:`OTHER_SIZES_KEPT`), outside inference mode, so that maps
    first built in an evaluation serve the backward pass of later training.

    Args:
        window_size: window side.
        shift_size: cyclic shift of SW-MSA, 0 for W-MSA; dropped on maps no larger than one
            window, as in the official code.
        resolution: (H, W) of the block's map at the nominal input size, multiples of
            ``window_size``; None builds every size on first use.
    """

    def __init__(self, window_size: int, shift_size: int = 0, resolution: Sequence[int] | None = None) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size} for window {window_size}.")
        self.window_size = window_size
        self.shift_size = shift_size
        self.resolution = None if resolution is None else (int(resolution[0]), int(resolution[1]))
        maps: tuple[torch.Tensor | None, ...] = (None, None, None)
        if self.resolution is not None:
            if self.resolution[0] % window_size or self.resolution[1] % window_size:
                raise ValueError(f"resolution {self.resolution} is not a multiple of the window size {window_size}.")
            maps = self._build(*self.resolution, torch.device("cpu"))
        self.register_buffer("shift_mask", maps[0], persistent=False)
        self.register_buffer("gather", maps[1], persistent=False)
        self.register_buffer("scatter", maps[2], persistent=False)
        self._other_sizes: dict[tuple[int, int, torch.device], tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]] = {}

    def shift(self, height: int, width: int) -> int:
        """The cyclic shift applied on a (H, W) map."""
        return self.shift_size if min(height, width) > self.window_size else 0

    def maps(
        self, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Shift mask (nW, N, N) (None without shift), gather and scatter (H·W,) of a (H, W) map.

        The mask's -100 entries stop attention across the wrap-around of the shift (MONAI's
        ``compute_mask``, as the official code); see :func:`window_token_order` for the maps.
        """
        if (height, width) == self.resolution:
            return self.shift_mask, self.gather, self.scatter
        if torch.compiler.is_compiling():
            return self._build(height, width, device)
        key = (height, width, device)
        if key not in self._other_sizes:
            if len(self._other_sizes) >= OTHER_SIZES_KEPT:
                self._other_sizes.pop(next(iter(self._other_sizes)))
            with torch.inference_mode(False):
                self._other_sizes[key] = self._build(height, width, device)
        return self._other_sizes[key]

    def _build(
        self, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The maps of :meth:`maps`, fp32 mask, on ``device``."""
        window, shift = self.window_size, self.shift(height, width)
        mask = compute_mask([height, width], (window, window), (shift, shift), device) if shift else None
        return (mask, *window_token_order(height, width, window, shift, device))


class PromptProjection(nn.ModuleDict):
    """One ``Linear(n_k, dim)`` per prompt (official ``*_prompt_proj_mlp``), combined by product.

    Args:
        dim: block width C.
        prompt_sizes: one-hot length of each prompt, e.g. ``{"position": 11, "task": 2, ...}``.
    """

    def __init__(self, dim: int, prompt_sizes: Mapping[str, int]) -> None:
        super().__init__({prompt_field(key): nn.Linear(size, dim) for key, size in prompt_sizes.items()})
        self.keys_in_order = tuple(prompt_sizes)

    def forward(self, prompts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Prompts ``{key: (B, n_k)}`` -> combined embedding ``b`` (B, C)."""
        combined = None
        for key in self.keys_in_order:
            embedding = self[prompt_field(key)](prompts[key])
            combined = embedding if combined is None else combined * embedding
        return combined


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias and optional prompts.

    Args:
        dim: channels C.
        num_heads: attention heads; C must divide by it.
        window_size: side of the square window; N = window_size² tokens per window.
        qkv_bias: bias in the fused qkv projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        prompt_keys: names of the prompts whose hyper vectors this block owns; empty for a plain
            Swin attention.
        attention_impl: ``"fast"`` (rank-1 prompt term from a reduced projection, fused
            ``scaled_dot_product_attention`` otherwise) or ``"reference"`` (explicit
            ``(q·scale) W kᵀ`` as the official code, for tests and benchmarks).
        official_batch_prompt_bug: give window i the prompts of sample ``i % B`` as the official
            code does; only for parity with official checkpoints' reported numbers.
        onednn_linear: run the fast path's projections through oneDNN's inner product where
            :func:`bundle.networks.dense.linear` allows it; False keeps ``F.linear``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        prompt_keys: Sequence[str] = (),
        attention_impl: str = "fast",
        official_batch_prompt_bug: bool = False,
        onednn_linear: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.attention_impl = look_up_option(attention_impl, ATTENTION_IMPLS)
        self.official_batch_prompt_bug = official_batch_prompt_bug
        self.onednn_linear = onednn_linear
        self.attn_drop = attn_drop

        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        # Official init: uniform [0, 1) hyper vectors, one per prompt, (heads, head_dim) each.
        self.hyper = nn.ParameterDict(
            {prompt_field(key): nn.Parameter(torch.rand(num_heads, self.head_dim)) for key in prompt_keys}
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _bias(self) -> torch.Tensor:
        """Relative position bias (heads, N, N)."""
        n = self.window_size**2
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def _additive(self, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """Bias plus shift mask, (heads, N, N) or (nW, heads, N, N)."""
        bias = self._bias()
        # masks built on first use are fp32: in a network cast to bf16 the fp32 sum would meet
        # bf16 values in the prompted attention's matmul
        return bias if shift_mask is None else bias + shift_mask.to(bias.dtype).unsqueeze(1)

    def _qkv_parts(self) -> tuple[torch.Tensor, ...]:
        """The q, k, v rows of the fused projection: weights (heads, d, C), biases (heads, d) or None."""
        weights = self.qkv.weight.view(3, self.num_heads, self.head_dim, -1).unbind(0)
        if self.qkv.bias is None:
            return (*weights, None, None, None)
        return (*weights, *self.qkv.bias.view(3, self.num_heads, self.head_dim).unbind(0))

    def _prompt_vectors(self, embedding: torch.Tensor, batch: int, num_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank-1 factors of W: a (heads, d) and b per window (B, nW | 1, heads, d)."""
        a = None
        for vector in self.hyper.values():
            a = vector if a is None else a * vector
        b = embedding.view(batch, 1, self.num_heads, self.head_dim)
        if self.official_batch_prompt_bug:
            # Official tiling: windows are batch-major but W was repeated sample-major.
            window_index = torch.arange(batch * num_windows, device=embedding.device)
            b = b[window_index % batch].view(batch, num_windows, self.num_heads, self.head_dim)
        return a, b

    def forward(
        self,
        windows: torch.Tensor,
        batch: int,
        shift_mask: torch.Tensor | None = None,
        prompt_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            windows: (B·nW, N, C) tokens, windows batch-major (MONAI ``window_partition``).
            batch: B.
            shift_mask: (nW, N, N) additive mask of a shifted block, or None.
            prompt_embedding: (B, C) combined prompt embedding ``b``; required iff the block
                owns hyper vectors.

        Returns:
            (B·nW, N, C).
        """
        prompted = len(self.hyper) > 0
        if prompted and prompt_embedding is None:
            raise ValueError("this attention block is prompted but no prompt embedding was given.")
        if self.attention_impl == "reference":
            out = self._reference(windows, batch, shift_mask, prompt_embedding if prompted else None)
            return self.proj_drop(self.proj(out))
        if prompted:
            out = self._rank_one(windows, batch, shift_mask, prompt_embedding)
        else:
            out = self._fused(windows, batch, shift_mask)
        return self.proj_drop(dense.linear(out, self.proj.weight, self.proj.bias, onednn=self.onednn_linear))

    def _fused(self, windows: torch.Tensor, batch: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """Plain window attention on 4-D (B·nW, heads, N, d) views of the projection: (B·nW, N, C)."""
        total, n, channels = windows.shape
        heads = self.num_heads
        qkv = dense.linear(windows, self.qkv.weight, self.qkv.bias, onednn=self.onednn_linear)
        q, k, v = qkv.view(total, n, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        additive = self._additive(shift_mask)
        if torch.is_grad_enabled() and additive.requires_grad:
            # Training: the CPU flash kernel gives no gradient for the mask (the learnt bias) and
            # SDPA's math fallback is slower than these steps; scaling inside the bias add keeps
            # no scaled copy of q alive for the backward pass.
            logits = torch.add(additive, (q @ k.transpose(-2, -1)).view(batch, -1, heads, n, n), alpha=self.scale)
            weights = F.dropout(torch.softmax(logits, dim=-1), self.attn_drop, self.training)
            out = weights.view(total, heads, n, n) @ v
        else:
            # the CPU flash kernel takes a 4-D mask broadcasting against (B·nW, heads, N, N)
            if shift_mask is None:
                additive = additive.unsqueeze(0)
            else:
                additive = additive.unsqueeze(0).expand(batch, -1, -1, -1, -1).reshape(total, heads, n, n)
            dropout = self.attn_drop if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, additive, dropout, scale=self.scale)
        return out.transpose(1, 2).reshape(total, n, channels)

    def _rank_one(
        self, windows: torch.Tensor, batch: int, shift_mask: torch.Tensor | None, embedding: torch.Tensor
    ) -> torch.Tensor:
        """Prompted attention from ``q·a`` and ``k·b`` (one value per token and head): (B·nW, N, C)."""
        total, n, channels = windows.shape
        num_windows = total // batch
        heads, head_dim = self.num_heads, self.head_dim
        weight_q, weight_k, weight_v, bias_q, bias_k, bias_v = self._qkv_parts()
        a, b = self._prompt_vectors(embedding, batch, num_windows)
        tokens = windows.view(batch, num_windows * n, channels)

        # (x Wqᵀ + bq)·a = x (Wqᵀ a) + bq·a: fold a (and the scale) into a (heads, C) weight
        a = a * self.scale
        weight_qa = torch.einsum("hd,hdc->hc", a, weight_q)
        bias_qa = None if bias_q is None else (a * bias_q).sum(-1)
        if self.official_batch_prompt_bug:
            # b differs per window: project k in full, then reduce it with b
            q_a = F.linear(tokens, weight_qa, bias_qa)
            k = F.linear(tokens, weight_k.reshape(channels, channels), None if bias_k is None else bias_k.reshape(-1))
            k_b = torch.einsum("bwnhd,bwhd->bwnh", k.view(batch, num_windows, n, heads, head_dim), b)
            q_a = q_a.view(batch, num_windows, n, heads)
        else:
            # per-sample (heads, C) weight for k·b, stacked with the q·a weight: one batched GEMM
            b = b[:, 0]
            weight_kb = torch.einsum("bhd,hdc->bhc", b, weight_k)
            weight = torch.cat([weight_qa.expand(batch, -1, -1), weight_kb], dim=1).transpose(1, 2)  # (B, C, 2·heads)
            if bias_q is None:
                projected = torch.bmm(tokens, weight)
            else:
                bias = torch.cat([bias_qa.expand(batch, -1), (b * bias_k).sum(-1)], dim=1)  # (B, 2·heads)
                projected = torch.baddbmm(bias.unsqueeze(1), tokens, weight)
            q_a, k_b = projected.view(batch, num_windows, n, 2, heads).unbind(3)
        bias_v = None if bias_v is None else bias_v.reshape(-1)
        value = dense.linear(tokens, weight_v.reshape(channels, channels), bias_v, onednn=self.onednn_linear)

        q_a = q_a.permute(0, 1, 3, 2).unsqueeze(-1)  # (B, nW, heads, N, 1)
        k_b = k_b.permute(0, 1, 3, 2).unsqueeze(-2)  # (B, nW, heads, 1, N)
        logits = torch.addcmul(self._additive(shift_mask), q_a, k_b)  # (B, nW, heads, N, N)
        weights = F.dropout(torch.softmax(logits, dim=-1), self.attn_drop, self.training)
        out = weights @ value.view(batch, num_windows, n, heads, head_dim).transpose(2, 3)
        return out.transpose(2, 3).reshape(total, n, channels)

    def _reference(
        self,
        windows: torch.Tensor,
        batch: int,
        shift_mask: torch.Tensor | None,
        prompt_embedding: torch.Tensor | None,
    ) -> torch.Tensor:
        """The official math, step by step, with the explicit (d × d) W per window: (B·nW, N, C)."""
        total, n, channels = windows.shape
        num_windows = total // batch
        qkv = self.qkv(windows).view(batch, num_windows, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, d)
        q = q * self.scale
        if prompt_embedding is None:
            logits = q @ k.transpose(-2, -1)
        else:
            a, b = self._prompt_vectors(prompt_embedding, batch, num_windows)
            w = a.unsqueeze(-1) * b.unsqueeze(-2)  # (B, nW | 1, heads, d, d)
            logits = q @ w @ k.transpose(-2, -1)
        weights = torch.softmax(logits + self._additive(shift_mask), dim=-1)
        weights = F.dropout(weights, self.attn_drop, self.training)
        return (weights @ v).permute(0, 1, 3, 2, 4).reshape(total, n, channels)


class SwinBlock(nn.Module):
    """Swin Transformer block (W-MSA or SW-MSA, then MLP), prompted when ``prompt_sizes`` is set.

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: window side.
        shift_size: cyclic shift of SW-MSA (0 for W-MSA); dropped when the feature map is no
            larger than one window, as in the official code.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias in the qkv projection.
        drop: dropout after the attention projection and inside the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic depth rate of both residual branches.
        prompt_sizes: one-hot length per prompt key; None for an unprompted (encoder) block.
        attention_impl: see :class:`WindowAttention`.
        official_batch_prompt_bug: see :class:`WindowAttention`.
        resolution: (H, W) of this block's map at the network's nominal input size, whose window
            geometry is built here (:class:`WindowGeometry`); None builds each size on first use.
        cache_block_bytes: size of the MLP hidden layer per block of tokens in inference (see
            :func:`in_cache_blocks`); a value above the whole map's keeps the map in one piece.
        onednn_linear: see :class:`WindowAttention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        prompt_sizes: Mapping[str, int] | None = None,
        attention_impl: str = "fast",
        official_batch_prompt_bug: bool = False,
        resolution: Sequence[int] | None = None,
        cache_block_bytes: int = DEFAULT_CACHE_BLOCK_BYTES,
        onednn_linear: bool = True,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.geometry = WindowGeometry(window_size, shift_size, resolution)
        self.cache_block_bytes = cache_block_bytes
        self.onednn_linear = onednn_linear
        self.prompt_proj = PromptProjection(dim, prompt_sizes) if prompt_sizes else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            num_heads,
            window_size,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            prompt_keys=tuple(prompt_sizes) if prompt_sizes else (),
            attention_impl=attention_impl,
            official_batch_prompt_bug=official_batch_prompt_bug,
            onednn_linear=onednn_linear,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), dropout_rate=drop, act="GELU", dropout_mode="swin")

    def forward(self, x: torch.Tensor, prompts: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C); H and W must be multiples of the window size."""
        _, height, width, _ = x.shape
        window = self.window_size
        if height % window or width % window:
            raise ValueError(f"feature map {height}x{width} is not a multiple of the window size {window}.")
        shift = self.geometry.shift(height, width)
        mask, gather, scatter = self.geometry.maps(height, width, x.device)

        embedding = self.prompt_proj(prompts) if self.prompt_proj is not None else None
        if self.attn.attention_impl == "reference":
            attended = self._attend_rolled(self.norm1(x), shift, mask, embedding)
        else:
            attended = self._attend_gathered(self.norm1(x), gather, scatter, mask, embedding)
        x = x + self.drop_path(attended)
        if self.attn.attention_impl == "reference" or (self.training and isinstance(self.drop_path, DropPath)):
            return x + self.drop_path(self.mlp(self.norm2(x)))
        # the MLP is token-wise, so in blocks its 4·C-wide hidden layer stays in cache; stochastic
        # depth drops whole samples, so with it the map stays in one piece
        hidden_bytes = self.mlp.linear1.out_features * x.element_size()
        tokens = x.reshape(-1, x.shape[-1])
        out = in_cache_blocks(
            lambda t: t + dense.mlp(self.mlp, self.norm2(t), onednn=self.onednn_linear),
            tokens,
            hidden_bytes,
            self.cache_block_bytes,
        )
        return out.view_as(x)

    def _attend_gathered(
        self,
        x: torch.Tensor,
        gather: torch.Tensor,
        scatter: torch.Tensor,
        mask: torch.Tensor | None,
        embedding: torch.Tensor | None,
    ) -> torch.Tensor:
        """(Shifted) window attention of (B, H, W, C) with one token gather each way (index maps (H·W,))."""
        batch, height, width, channels = x.shape
        window = self.window_size
        windows = x.reshape(batch, height * width, channels).index_select(1, gather)
        out = self.attn(windows.view(-1, window * window, channels), batch, mask, embedding)
        return out.view(batch, height * width, channels).index_select(1, scatter).view(batch, height, width, channels)

    def _attend_rolled(
        self, x: torch.Tensor, shift: int, mask: torch.Tensor | None, embedding: torch.Tensor | None
    ) -> torch.Tensor:
        """The official sequence: roll, window partition, attention, window reverse, roll back."""
        batch, height, width, channels = x.shape
        window = self.window_size
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = self.attn(window_partition(x, (window, window)), batch, mask, embedding)
        x = window_reverse(windows.view(-1, window, window, channels), (window, window), (batch, height, width))
        return torch.roll(x, shifts=(shift, shift), dims=(1, 2)) if shift else x


class PatchExpanding(nn.Module):
    """Linear expansion then depth-to-space by ``scale`` (Swin-Unet ``PatchExpand`` / ``FinalPatchExpand_X4``).

    Args:
        dim: input channels C.
        out_dim: output channels; the Linear maps C to ``scale² · out_dim``.
        scale: spatial upsampling factor.
        cache_block_bytes: size of the expanded sub-pixels per block of token rows in
            :meth:`project` (see :func:`in_cache_blocks`).
        onednn_linear: run :meth:`project`'s Linear layers through
            :func:`bundle.networks.dense.linear`'s oneDNN path where it applies.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        scale: int = 2,
        cache_block_bytes: int = DEFAULT_CACHE_BLOCK_BYTES,
        onednn_linear: bool = True,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.cache_block_bytes = cache_block_bytes
        self.onednn_linear = onednn_linear
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, scale·H, scale·W, out_dim)."""
        pixels = self._expanded(x)
        batch, height, width, s, _, channels = pixels.shape
        return pixels.transpose(2, 3).reshape(batch, height * s, width * s, channels)

    def project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Expand, normalise and map each output pixel by ``weight`` (K, out_dim), channels-first.

        Equals :meth:`forward` followed by a bias-free 1×1 convolution, but the depth-to-space
        moves K channels instead of out_dim (the largest map of the network at the input size).

        Args:
            x: (B, H, W, C).
            weight: (K, out_dim).

        Returns:
            (B, K, scale·H, scale·W).
        """
        # the expanded sub-pixels (scale² · out_dim per token) are the largest tensor of the
        # forward: made and consumed in blocks of token rows they stay in cache
        batch, height, width, channels = x.shape
        s, classes = self.scale, weight.shape[0]
        row_bytes = width * s * s * self.norm.normalized_shape[0] * x.element_size()
        pixels = in_cache_blocks(
            lambda rows: self._linear(self._expanded(rows.unsqueeze(0), fast=True), weight).squeeze(0),
            x.reshape(batch * height, width, channels),
            row_bytes,
            self.cache_block_bytes,
        ).view(batch, height, width, s, s, classes)
        return pixels.permute(0, 5, 1, 3, 2, 4).reshape(batch, classes, height * s, width * s)

    def _expanded(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """(B, H, W, C) -> normalised sub-pixels (B, H, W, scale, scale, out_dim).

        The Linear's channel order is (p1 p2 c), as official; LayerNorm acts per output pixel, so
        it runs before the depth-to-space and gives the same numbers. ``fast`` runs the Linear
        through :func:`bundle.networks.dense.linear`.
        """
        batch, height, width, _ = x.shape
        expanded = self._linear(x, self.expand.weight) if fast else self.expand(x)
        return self.norm(expanded.view(batch, height, width, self.scale, self.scale, -1))

    def _linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Bias-free (..., C_in) -> (..., C_out) through :func:`bundle.networks.dense.linear`."""
        return dense.linear(x, weight, onednn=self.onednn_linear)


class ChannelHalving(nn.Module):
    """Linear C -> C/2 then LayerNorm (official ``ChannelHalf``), used between classification stages."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim // 2, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C/2)."""
        return self.norm(self.linear(x))


class SwinStage(nn.Module):
    """``depth`` Swin blocks alternating W-MSA / SW-MSA, then an optional resampling module.

    Args:
        dim: channels C.
        depth: number of blocks.
        num_heads: attention heads.
        window_size: window side.
        drop_path: stochastic depth rate per block (length ``depth``).
        resample: module applied after the blocks (patch merging, expanding, channel halving).
        use_checkpoint: recompute each block in the backward pass to save activation memory.
        block_kwargs: the remaining :class:`SwinBlock` arguments (``resolution`` included).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        resample: nn.Module | None = None,
        use_checkpoint: bool = False,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                drop_path=drop_path[i],
                **block_kwargs,
            )
            for i in range(depth)
        )
        self.resample = resample

    def forward(self, x: torch.Tensor, prompts: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, H, W, C) -> resampled (B, H', W', C')."""
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint(block, x, prompts, use_reentrant=False)
            else:
                x = block(x, prompts)
        return x if self.resample is None else self.resample(x)


class PatchEmbedding(nn.Module):
    """Non-overlapping patch projection + LayerNorm, returning channels-last tokens.

    MONAI's ``PatchEmbed`` returns channels-first maps; this network keeps (B, H, W, C)
    throughout, so the two permutes MONAI's layout would cost per forward are avoided.
    """

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H/patch, W/patch, embed_dim)."""
        return self.norm(self.proj(image).permute(0, 2, 3, 1))
