"""Classification and regression heads, shared across pyramid levels (reference §3.9).

The levels are run through each head in one pass: they are concatenated along time with
``kernel_size // 2`` masked steps between them (:func:`pack_levels`), which for a masked conv is
exactly the zero padding a separate pass per level would see. One conv launch per layer instead
of one per level and layer; the results are identical.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from localization.model.blocks import LayerNorm, MaskedConv1D, Scale


class PackedLevels(NamedTuple):
    feats: Tensor  # (B, C, sum_l (T_l + gap)) time-major: levels side by side, each followed by `gap` zeros
    mask: Tensor  # (B, 1, sum_l (T_l + gap)) bool, False on the gaps
    lengths: list[int]  # T_l per level
    gap: int


def pack_levels(feats: list[Tensor], masks: list[Tensor], gap: int) -> PackedLevels:
    """Concatenate per-level (B, C, T_l) features and (B, 1, T_l) masks with `gap` masked steps."""
    batch, channels, _ = feats[0].shape
    pad_x = feats[0].new_zeros(batch, gap, channels)  # (B, gap, C)
    pad_m = masks[0].new_zeros(batch, 1, gap)  # (B, 1, gap)
    # concatenated as (B, T, C), so the packed features come out time-major like the levels
    x = torch.cat([t for f in feats for t in (f.transpose(1, 2), pad_x)], dim=1).transpose(1, 2)  # (B, C, L)
    m = torch.cat([t for k in masks for t in (k, pad_m)], dim=-1)  # (B, 1, sum (T_l + gap))
    return PackedLevels(x, m, [f.shape[-1] for f in feats], gap)


def unpack_levels(x: Tensor, packed: PackedLevels) -> list[Tensor]:
    """Split a (B, C', sum (T_l + gap)) head output back into per-level (B, C', T_l) views."""
    pieces = x.split([n + packed.gap for n in packed.lengths], dim=-1)
    return [piece[..., :n] for piece, n in zip(pieces, packed.lengths, strict=True)]


class _ConvHead(nn.Module):
    """(num_layers - 1) x [MaskedConv1D (no bias with LN) -> LN -> ReLU]; subclasses add the predictor."""

    def __init__(self, input_dim: int, feat_dim: int, num_layers: int, kernel_size: int, with_ln: bool) -> None:
        super().__init__()
        dims = [input_dim] + [feat_dim] * (num_layers - 1)
        self.head = nn.ModuleList(
            MaskedConv1D(dims[i], dims[i + 1], kernel_size, bias=not with_ln) for i in range(num_layers - 1)
        )
        self.norm = nn.ModuleList(LayerNorm(feat_dim) if with_ln else nn.Identity() for _ in range(num_layers - 1))
        self.act = nn.ReLU()
        self.out_dim = dims[-1]  # input width of the predictor

    def trunk(self, packed: PackedLevels) -> Tensor:
        x = packed.feats  # (B, C, L) with L = sum (T_l + gap)
        for conv, norm in zip(self.head, self.norm, strict=True):
            x, _ = conv(x, packed.mask)  # (B, feat_dim, L)
            x = self.act(norm(x))
        return x


class ClsHead(_ConvHead):
    """Per-class logits; the predictor bias starts at -log((1 - p) / p) (focal-loss prior)."""

    def __init__(
        self,
        input_dim: int,
        feat_dim: int,
        num_classes: int,
        num_layers: int,
        kernel_size: int,
        with_ln: bool,
        prior_prob: float,
    ) -> None:
        super().__init__(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.cls_head = MaskedConv1D(self.out_dim, num_classes, kernel_size)
        nn.init.constant_(self.cls_head.conv.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, packed: PackedLevels) -> list[Tensor]:
        logits, _ = self.cls_head(self.trunk(packed), packed.mask)  # (B, K, L)
        return unpack_levels(logits, packed)  # per level (B, K, T_l)


class RegHead(_ConvHead):
    """Distances to the start and end, in units of the level stride: ReLU(Scale_l(conv))."""

    def __init__(
        self, input_dim: int, feat_dim: int, num_levels: int, num_layers: int, kernel_size: int, with_ln: bool
    ) -> None:
        super().__init__(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.scale = nn.ModuleList(Scale() for _ in range(num_levels))
        self.offset_head = MaskedConv1D(self.out_dim, 2, kernel_size)

    def forward(self, packed: PackedLevels) -> list[Tensor]:
        offsets, _ = self.offset_head(self.trunk(packed), packed.mask)  # (B, 2, L)
        levels = unpack_levels(offsets, packed)  # per level (B, 2, T_l)
        return [torch.relu(scale(x)) for scale, x in zip(self.scale, levels, strict=True)]
