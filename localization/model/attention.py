"""Masked attention kernels of the MHCA blocks: global, and banded (the reference's local
window) with interchangeable backends.

All take q, k, v as (B, H, T, d), unscaled, and a key mask kv_mask (B, T) bool, and return
(B, H, T, d). The band backends give the same values at every query that has a valid key in its
window (tests check each against dense attention with a band mask); queries without one (padding)
get some finite average, which the caller masks.

Backends of :func:`band_attention` (``set_band_attention_backend``):
- ``banded``: chunked matmuls + a pad-and-reshape skew (:func:`local_attention`), any device;
- ``blocks``: one fused ``scaled_dot_product_attention`` over query chunks and the keys each
  chunk can see, with a band mask (:func:`blocked_attention`);
- ``flex``: FlexAttention with a band block mask (:func:`flex_band_attention`), compiled on CUDA;
- ``auto`` (default): ``blocks`` on CUDA (a fused kernel there), ``banded`` elsewhere (on the CPU
  the two were within 6% of each other forward + backward, see BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BAND_BACKENDS = ("auto", "banded", "blocks", "flex")
_backend = "auto"


def set_band_attention_backend(name: str) -> None:
    """Choose the kernel of every local-window attention in the process (``BAND_BACKENDS``)."""
    global _backend
    if name not in BAND_BACKENDS:
        raise ValueError(f"unknown band attention backend {name!r}; expected one of {', '.join(BAND_BACKENDS)}")
    _backend = name


def band_attention_backend(device: torch.device) -> str:
    """The backend ``band_attention`` uses for tensors on ``device`` ("auto" resolved)."""
    if _backend != "auto":
        return _backend
    return "blocks" if device.type == "cuda" else "banded"


def band_attention(q: Tensor, k: Tensor, v: Tensor, kv_mask: Tensor, window: int) -> Tensor:
    """Query t attends to the valid keys t - w//2 .. t + w//2, with the selected backend."""
    backend = band_attention_backend(q.device)
    if backend == "blocks":
        return blocked_attention(q, k, v, kv_mask, window)
    if backend == "flex":
        return flex_band_attention(q, k, v, kv_mask, window)
    return local_attention(q, k, v, kv_mask, window)


def global_attention(q: Tensor, k: Tensor, v: Tensor, kv_mask: Tensor) -> Tensor:
    """Dense attention over the valid keys (the reference's MaskedMHCA).

    q: (B, H, Tq, d) and k, v: (B, H, Tk, d), unscaled; kv_mask: (B, Tk) bool. -> (B, H, Tq, d).
    A sample without any valid key attends to all of them, so its (masked later) rows stay finite.
    """
    valid = kv_mask | ~kv_mask.any(dim=-1, keepdim=True)  # (B, Tk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])


def local_attention(q: Tensor, k: Tensor, v: Tensor, kv_mask: Tensor, window: int, chunk: int = 32) -> Tensor:
    """Banded attention: query t sees the valid keys t - w//2 .. t + w//2, in O(T * w).

    Same result as dense attention with the band mask |i - j| <= w//2 plus the key padding mask
    (the reference's Longformer-style LocalMaskedMHCA), but for any length T: queries are cut
    into chunks of ``chunk`` steps, each chunk is multiplied with the ``chunk + w - 1`` keys it
    can see, and the band is read off the product with a pad-and-reshape skew.

    q, k, v: (B, H, T, d), unscaled; kv_mask: (B, T) bool. -> (B, H, T, d). Rows whose window has
    no valid key (padded queries) get a uniform average: finite, and masked by the caller.
    """
    batch, heads, length, dim = q.shape
    radius = window // 2
    c = min(chunk, length)  # queries per chunk
    n = -(-length // c)  # chunks
    tail = n * c - length  # queries added to fill the last chunk
    span = c + 2 * radius  # keys one chunk sees
    q = F.pad(q * dim**-0.5, (0, 0, 0, tail)).view(batch, heads, n, c, dim)  # (B, H, n, c, d)
    # keys/values padded by the radius on both sides: padded position p holds key p - radius
    k = F.pad(k, (0, 0, radius, radius + tail)).unfold(2, span, c)  # (B, H, n, d, span)
    v = F.pad(v, (0, 0, radius, radius + tail)).unfold(2, span, c).transpose(-1, -2)  # (B, H, n, span, d)
    valid = F.pad(kv_mask, (radius, radius + tail)).unfold(1, window, 1)  # (B, n*c, w)

    scores = q @ k  # (B, H, n, c, span); band[j, o] = scores[j, j + o], o = 0..w-1
    band = F.pad(scores.flatten(-2), (0, c)).view(batch, heads, n, c, span + 1)[..., :window]
    band = band.reshape(batch, heads, n * c, window).float()  # (B, H, n*c, w), fp32 softmax
    band = band.masked_fill(~valid[:, None], torch.finfo(band.dtype).min)
    probs = band.softmax(dim=-1).to(v.dtype).view(batch, heads, n, c, window)  # (B, H, n, c, w)

    # inverse skew: dense[j, j + o] = probs[j, o], zero elsewhere
    dense = F.pad(probs, (0, span + 1 - window)).flatten(-2)[..., : c * span]  # (B, H, n, c*span)
    out = dense.view(batch, heads, n, c, span) @ v  # (B, H, n, c, d)
    return out.view(batch, heads, n * c, dim)[:, :, :length]  # (B, H, T, d)


def _key_blocks(x: Tensor, radius: int, chunk: int, tail: int) -> Tensor:
    """(B, H, T, d) -> (B * n, H, chunk + 2 * radius, d): the keys (values) each query chunk sees."""
    heads, dim = x.shape[1], x.shape[3]
    span = chunk + 2 * radius
    blocks = F.pad(x, (0, 0, radius, radius + tail)).unfold(2, span, chunk)  # (B, H, n, d, span)
    return blocks.permute(0, 2, 1, 4, 3).reshape(-1, heads, span, dim)  # (B * n, H, span, d)


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, kv_mask: Tensor, window: int, chunk: int = 32) -> Tensor:
    """Band attention as one fused SDPA call: the queries are cut into chunks of ``chunk`` steps,
    each chunk is a batch entry attending to the ``chunk + w - 1`` keys it can see, under a mask
    that keeps its band and the valid keys. Rows without any allowed key see the whole span."""
    batch, heads, length, dim = q.shape
    radius = window // 2
    c = min(chunk, length)
    n = -(-length // c)
    tail = n * c - length
    span = c + 2 * radius
    qb = F.pad(q, (0, 0, 0, tail)).view(batch, heads, n, c, dim).transpose(1, 2).reshape(-1, heads, c, dim)
    offset = torch.arange(span, device=q.device)[None, :] - torch.arange(c, device=q.device)[:, None]
    band = (offset >= 0) & (offset <= 2 * radius)  # (c, span): key j of the span is in query i's window
    valid = F.pad(kv_mask, (radius, radius + tail)).unfold(1, span, c)  # (B, n, span)
    allowed = band & valid[:, :, None, :]  # (B, n, c, span)
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(
        qb, _key_blocks(k, radius, c, tail), _key_blocks(v, radius, c, tail), attn_mask=allowed.view(-1, 1, c, span)
    )  # (B * n, H, c, d)
    return out.view(batch, n, heads, c, dim).transpose(1, 2).reshape(batch, heads, n * c, dim)[:, :, :length]


_compiled_flex: Callable | None = None


def flex_band_attention(q: Tensor, k: Tensor, v: Tensor, kv_mask: Tensor, window: int) -> Tensor:
    """Band attention with FlexAttention and a block-sparse band mask (compiled on CUDA, where
    it is a fused kernel; eager elsewhere, which is slow and meant for checking it)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    global _compiled_flex
    batch, _, length, _ = q.shape
    radius = window // 2
    valid = kv_mask | ~kv_mask.any(dim=-1, keepdim=True)  # (B, T)

    def in_band(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return ((q_idx - kv_idx).abs() <= radius) & valid[b, kv_idx]

    block_mask = create_block_mask(in_band, batch, None, length, length, device=q.device)
    attend = flex_attention
    if q.device.type == "cuda":
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        attend = _compiled_flex
    return attend(q, k, v, block_mask=block_mask)
