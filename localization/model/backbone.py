"""The "convTransformer" backbone: conv embedding, full-resolution stem, downsampling branch."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from localization.config.schema import ModelConfig, window_sizes
from localization.model.blocks import LayerNorm, MaskedConv1D, TransformerBlock, sinusoid_encoding


class ConvTransformerBackbone(nn.Module):
    """Features (B, C_in, T) -> one feature map per pyramid level (reference §3.3, §3.6).

    Level 0 is the stem output (stride 1); level l > 0 is the output of branch block l, each of
    which downsamples by ``scale_factor``.
    """

    def __init__(self, cfg: ModelConfig, input_dim: int, max_seq_len: int) -> None:
        super().__init__()
        n_embed, n_stem, n_branch = cfg.backbone_arch
        windows = window_sizes(cfg)
        dim = cfg.embd_dim
        self.embd = nn.ModuleList(
            MaskedConv1D(input_dim if i == 0 else dim, dim, cfg.embd_kernel_size, bias=not cfg.embd_with_ln)
            for i in range(n_embed)
        )
        self.embd_norm = nn.ModuleList(LayerNorm(dim) if cfg.embd_with_ln else nn.Identity() for _ in range(n_embed))
        self.relu = nn.ReLU()
        self.use_abs_pe = cfg.use_abs_pe
        if cfg.use_abs_pe:
            # (1, D, max_seq_len), scaled by 1/sqrt(D); not saved in checkpoints (rebuilt here)
            self.register_buffer("pos_embd", sinusoid_encoding(max_seq_len, dim) / dim**0.5, persistent=False)
        self.stem = nn.ModuleList(
            TransformerBlock(dim, cfg.n_head, windows[0], 1, cfg.dropout, cfg.droppath) for _ in range(n_stem)
        )
        self.branch = nn.ModuleList(
            TransformerBlock(dim, cfg.n_head, windows[1 + i], cfg.scale_factor, cfg.dropout, cfg.droppath)
            for i in range(n_branch)
        )
        for module in self.modules():  # the reference zeroes every Conv1d/Linear bias
            if isinstance(module, (nn.Conv1d, nn.Linear)) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def _position_embedding(self, length: int) -> Tensor:
        """(1, D, T). Longer sequences stretch the table by linear interpolation, as the
        reference does at inference. Deviation: the reference asserts T <= max_seq_len in
        training; we stretch there too, so a long training crop never fails."""
        table = self.pos_embd  # (1, D, max_seq_len)
        if length > table.shape[-1]:
            return F.interpolate(table, size=length, mode="linear", align_corners=False)
        return table[:, :, :length]

    def forward(self, x: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        # x: (B, C_in, T); mask: (B, 1, T) bool
        for conv, norm in zip(self.embd, self.embd_norm, strict=True):
            x, mask = conv(x, mask)  # (B, D, T)
            x = self.relu(norm(x))
        if self.use_abs_pe:
            x = x + self._position_embedding(x.shape[-1]) * mask.to(x.dtype)  # (B, D, T)
        for block in self.stem:
            x, mask = block(x, mask)  # (B, D, T)
        feats, masks = [x], [mask]
        for block in self.branch:
            x, mask = block(x, mask)  # (B, D, T_l) with T_l = T / scale_factor**l
            feats.append(x)
            masks.append(mask)
        return feats, masks
