"""SlowFast 8x8 (R50, R101) as a clip feature extractor, in the Kinetics-400 checkpoints' layout.

The recipe's second stream is the pooled feature of SlowFast pre-trained on Kinetics-400. The modules
below are named and ordered so that ``state_dict()`` has exactly the keys, shapes and order of
PyTorchVideo's ``slowfast_r50`` / ``slowfast_r101`` without the head's projection (``blocks.6.proj``),
so its ``.pyth`` checkpoints load strictly.

Architecture (Feichtenhofer et al., SlowFast networks; PyTorchVideo's hub models):
- two pathways: slow (8 frames, 64 stem channels), fast (32 frames, 8 = 64 / beta channels, beta 8);
- stem: conv (1,7,7) slow / (5,7,7) fast, stride (1,2,2), BN, ReLU, max-pool (1,3,3) stride (1,2,2);
- four ResNet stages of bottleneck blocks, depths (3,4,6,3) for R50 and (3,4,23,3) for R101; the
  temporal kernel of conv_a is 1 in the slow pathway's first two stages and 3 everywhere else; the
  spatial stride (1,2,2,2) sits on conv_b and the shortcut;
- after the stem and each of the first three stages, a lateral connection: a temporal conv on the
  fast pathway (kernel 7 for R50, 5 for R101, stride alpha = 4, 2x the fast channels), BN, ReLU,
  concatenated to the slow pathway's channels;
- head: each pathway averaged over time and space, concatenated: 2048 (slow) + 256 (fast) = 2304.
  The checkpoints pool with fixed kernels valid only for 32 frames at 224 x 224; adaptive pooling
  is the same there and works at any frame size.
"""

from __future__ import annotations

import torch
from torch import nn

ALPHA = 4  # fast frames per slow frame
FAST_FRAMES = 32  # frames of the fast pathway (8 x 8: 8 slow frames, alpha 4)
BETA = 8  # slow channels per fast channel
FUSION_RATIO = 2  # lateral output channels per fast channel
FEATURE_DIM = 2304
STAGE_DEPTHS = {"slowfast_r50": (3, 4, 6, 3), "slowfast_r101": (3, 4, 23, 3)}
FUSION_KERNEL = {"slowfast_r50": 7, "slowfast_r101": 5}
BACKBONES = tuple(STAGE_DEPTHS)
# the checkpoints' 400-way Kinetics head: present in every .pyth file, not part of the feature
HEAD_ENTRIES: dict[str, tuple[int, ...]] = {"blocks.6.proj.weight": (400, FEATURE_DIM), "blocks.6.proj.bias": (400,)}


def _conv(c_in: int, c_out: int, kernel: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1)) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=False)


class Stem(nn.Module):
    """conv -> BN -> ReLU -> spatial max-pool: the input at a quarter of its height and width."""

    def __init__(self, c_out: int, temporal_kernel: int) -> None:
        super().__init__()
        self.conv = _conv(3, c_out, (temporal_kernel, 7, 7), stride=(1, 2, 2))
        self.norm = nn.BatchNorm3d(c_out)
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.norm(self.conv(x))))


class Bottleneck(nn.Module):
    """Tx1x1 -> 1x3x3 (spatial stride) -> 1x1x1, BN after each, ReLU between (branch2 of a block)."""

    def __init__(self, c_in: int, c_inner: int, c_out: int, temporal_kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_a = _conv(c_in, c_inner, (temporal_kernel, 1, 1))
        self.norm_a = nn.BatchNorm3d(c_inner)
        self.conv_b = _conv(c_inner, c_inner, (1, 3, 3), stride=(1, stride, stride))
        self.norm_b = nn.BatchNorm3d(c_inner)
        self.conv_c = _conv(c_inner, c_out, (1, 1, 1))
        self.norm_c = nn.BatchNorm3d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm_a(self.conv_a(x)))
        x = torch.relu(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """ReLU(shortcut + bottleneck); the shortcut is a strided 1x1x1 conv + BN where the shape changes."""

    def __init__(self, c_in: int, c_inner: int, c_out: int, temporal_kernel: int, stride: int) -> None:
        super().__init__()
        self.branch1_conv: nn.Module | None = None
        self.branch1_norm: nn.Module | None = None
        if c_in != c_out or stride != 1:
            self.branch1_conv = _conv(c_in, c_out, (1, 1, 1), stride=(1, stride, stride))
            self.branch1_norm = nn.BatchNorm3d(c_out)
        self.branch2 = Bottleneck(c_in, c_inner, c_out, temporal_kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
        return torch.relu(shortcut + self.branch2(x))


class ResStage(nn.Module):
    """``depth`` blocks; the first changes channels and applies the stage's spatial stride."""

    def __init__(self, depth: int, c_in: int, c_inner: int, c_out: int, temporal_kernel: int, stride: int) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(
            ResBlock(c_in if i == 0 else c_out, c_inner, c_out, temporal_kernel, stride if i == 0 else 1)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class FastToSlow(nn.Module):
    """The lateral connection: fast features, strided to the slow frame rate, appended to slow's channels."""

    def __init__(self, c_fast: int, temporal_kernel: int) -> None:
        super().__init__()
        self.conv_fast_to_slow = _conv(c_fast, FUSION_RATIO * c_fast, (temporal_kernel, 1, 1), stride=(ALPHA, 1, 1))
        self.norm = nn.BatchNorm3d(FUSION_RATIO * c_fast)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return torch.cat([slow, torch.relu(self.norm(self.conv_fast_to_slow(fast)))], dim=1)


class TwoPathwayBlock(nn.Module):
    """One module per pathway, then the optional lateral connection (absent after the last stage)."""

    def __init__(self, slow: nn.Module, fast: nn.Module, fusion: FastToSlow | None) -> None:
        super().__init__()
        self.multipathway_blocks = nn.ModuleList([slow, fast])
        self.multipathway_fusion = fusion

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slow, fast = self.multipathway_blocks[0](slow), self.multipathway_blocks[1](fast)
        if self.multipathway_fusion is not None:
            slow = self.multipathway_fusion(slow, fast)
        return slow, fast


class SlowFast(nn.Module):
    """``forward(slow [B,3,8,H,W], fast [B,3,32,H,W]) -> [B, 2304]``: the pooled clip feature."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in STAGE_DEPTHS:
            raise ValueError(f"unknown backbone {name!r}: one of {list(BACKBONES)}")
        self.name = name
        fusion_kernel = FUSION_KERNEL[name]
        slow_dim, fast_dim = 64, 64 // BETA
        blocks = [TwoPathwayBlock(Stem(slow_dim, 1), Stem(fast_dim, 5), FastToSlow(fast_dim, fusion_kernel))]
        slow_in = slow_dim + FUSION_RATIO * fast_dim
        fast_in = fast_dim
        out = 4 * slow_dim  # slow output channels of the first stage
        for stage, depth in enumerate(STAGE_DEPTHS[name]):
            stride = 1 if stage == 0 else 2
            slow_stage = ResStage(depth, slow_in, out // 4, out, 1 if stage < 2 else 3, stride)
            fast_stage = ResStage(depth, fast_in, out // 4 // BETA, out // BETA, 3, stride)
            last = stage == len(STAGE_DEPTHS[name]) - 1
            blocks.append(
                TwoPathwayBlock(slow_stage, fast_stage, None if last else FastToSlow(out // BETA, fusion_kernel))
            )
            slow_in, fast_in = out + FUSION_RATIO * out // BETA, out // BETA
            out *= 2
        self.blocks = nn.ModuleList(blocks)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            slow, fast = block(slow, fast)
        return torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)
