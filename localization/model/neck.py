"""The "identity" neck (reference FPNIdentity): a LayerNorm per pyramid level, nothing else."""

from __future__ import annotations

from torch import Tensor, nn

from localization.model.blocks import LayerNorm


class IdentityNeck(nn.Module):
    """Per-level LayerNorm (or nothing when ``with_ln`` is false); masks pass through."""

    def __init__(self, num_levels: int, dim: int, with_ln: bool) -> None:
        super().__init__()
        self.fpn_norms = nn.ModuleList(LayerNorm(dim) if with_ln else nn.Identity() for _ in range(num_levels))

    def forward(self, feats: list[Tensor], masks: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        # feats: per level (B, D, T_l); masks: per level (B, 1, T_l) bool
        return [norm(x) for norm, x in zip(self.fpn_norms, feats, strict=True)], masks
