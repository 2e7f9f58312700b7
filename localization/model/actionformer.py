"""ActionFormer (reference "LocPointTransformer"), forward pass only.

Targets, losses and decoding live in localization.training.targets / losses / postprocess; this module
maps padded features to per-level logits and offsets.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from localization.config.schema import ModelConfig, inference_div_factor, num_levels
from localization.model.backbone import ConvTransformerBackbone
from localization.model.heads import ClsHead, RegHead, pack_levels
from localization.model.neck import IdentityNeck


class ModelOutput(NamedTuple):
    cls_logits: list[Tensor]  # per level (B, T_l, num_classes)
    offsets: list[Tensor]  # per level (B, T_l, 2), >= 0, in units of the level stride
    masks: list[Tensor]  # per level (B, T_l) bool


class ActionFormer(nn.Module):
    """Backbone -> identity neck -> shared heads.

    ``max_seq_len`` only sizes the absolute position table (when ``use_abs_pe``); inputs of any
    length that is a multiple of ``div_factor`` (scale_factor ** (levels - 1)) are accepted, and
    valid outputs do not depend on how much padding follows a video (with ``use_abs_pe``, only
    while the padded length stays <= max_seq_len: beyond it the table is stretched to that length).
    """

    def __init__(self, cfg: ModelConfig, input_dim: int, num_classes: int, max_seq_len: int) -> None:
        super().__init__()
        if cfg.fpn_dim != cfg.embd_dim:
            raise ValueError(
                f"the identity neck needs model.fpn_dim == model.embd_dim, got {cfg.fpn_dim} and {cfg.embd_dim}"
            )
        levels = num_levels(cfg)
        self.strides = [cfg.scale_factor**level for level in range(levels)]
        self.div_factor = inference_div_factor(cfg)
        self.num_classes = num_classes
        self.head_gap = cfg.head_kernel_size // 2
        self.backbone = ConvTransformerBackbone(cfg, input_dim, max_seq_len)
        self.neck = IdentityNeck(levels, cfg.fpn_dim, cfg.fpn_with_ln)
        self.cls_head = ClsHead(
            cfg.fpn_dim,
            cfg.head_dim,
            num_classes,
            cfg.head_num_layers,
            cfg.head_kernel_size,
            cfg.head_with_ln,
            cfg.cls_prior_prob,
        )
        self.reg_head = RegHead(
            cfg.fpn_dim, cfg.head_dim, levels, cfg.head_num_layers, cfg.head_kernel_size, cfg.head_with_ln
        )

    def forward(self, feats: Tensor, masks: Tensor) -> ModelOutput:
        # feats: (B, C, T) with T a multiple of div_factor; masks: (B, 1, T) bool
        expected_mask = (feats.shape[0], 1, feats.shape[-1])
        if feats.dim() != 3 or masks.shape != expected_mask or masks.dtype != torch.bool:
            raise ValueError(
                f"ActionFormer expects feats (B, C, T) and bool masks (B, 1, T), "
                f"got {tuple(feats.shape)} and {tuple(masks.shape)} {masks.dtype}"
            )
        if feats.shape[-1] % self.div_factor:
            raise ValueError(
                f"ActionFormer: input length {feats.shape[-1]} must be a multiple of "
                f"{self.div_factor} (scale_factor ** (levels - 1)); pad the batch to it"
            )
        level_feats, level_masks = self.backbone(feats, masks)  # per level (B, D, T_l), (B, 1, T_l)
        level_feats, level_masks = self.neck(level_feats, level_masks)
        packed = pack_levels(level_feats, level_masks, self.head_gap)
        logits = self.cls_head(packed)  # per level (B, K, T_l)
        offsets = self.reg_head(packed)  # per level (B, 2, T_l)
        return ModelOutput(
            cls_logits=[x.transpose(1, 2) for x in logits],  # (B, T_l, K)
            offsets=[x.transpose(1, 2) for x in offsets],  # (B, T_l, 2)
            masks=[m[:, 0, :] for m in level_masks],  # (B, T_l)
        )
