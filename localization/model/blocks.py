"""Building blocks of the ActionFormer backbone (reference: libs/modeling/blocks.py).

Layout: features are (B, C, T) tensors and masks (B, 1, T) bool, True = valid. Inside the model
the features are *stored* time-major (strides (T*C, 1, C), see :func:`time_major`): channels are
adjacent in memory, so the LayerNorms over C, the 1x1 convs (matmuls) and the channels-last
convolutions all read and write them without transposing copies. Every block accepts either
storage and returns time-major features; the values are the same either way.

Padding contract (a deliberate deviation from the reference, see ``MaskedConv1D``): a padded
step behaves exactly like a step outside the sequence, so the outputs at valid steps do not
depend on how much padding a batch carries. That is what lets the
trainer pad each batch to its longest video instead of to ``max_seq_len``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from localization.model.attention import band_attention, global_attention


def time_major(x: Tensor) -> Tensor:
    """(B, C, T) with time-major storage; a no-op (no copy) when ``x`` is stored that way already."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A kernel-1 Conv1d (weight (C_out, C_in, 1)) as a matmul over the channels: (B, C_in, T) ->
    (B, C_out, T) time-major. No copy when ``x`` is time-major."""
    return F.linear(x.transpose(1, 2), weight[:, :, 0], bias).transpose(1, 2)


class PointwiseConv1d(nn.Conv1d):
    """nn.Conv1d with kernel 1 (same parameters and state dict) that keeps time-major storage;
    nn.Conv1d itself would return channels-first storage."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return pointwise(x, self.weight, self.bias)


class MaskedConv1D(nn.Module):
    """Conv1d with 'same' padding whose padded input and output steps are zero.

    The mask is downsampled by nearest neighbour (every ``stride``-th step) for strided convs.
    Deviation: the reference masks only the output, so a padded step next to a valid one feeds
    the LayerNorm bias of the previous layer into the conv; we also zero the input, which makes
    padding indistinguishable from the conv's own zero padding.
    The weights live in a child nn.Conv1d (the reference's state dict); the convolution runs as a
    channels-last Conv2d over (B, C, 1, T), which takes and returns time-major storage.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"MaskedConv1D needs an odd kernel size, got {kernel_size}")
        self.stride = stride
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias
        )
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, mask: Tensor, input_masked: bool = False) -> tuple[Tensor, Tensor]:
        """``input_masked``: the caller has already zeroed the padded steps of ``x`` (several
        convs reading one input mask it once)."""
        # x: (B, C_in, T); mask: (B, 1, T) bool
        length = x.shape[-1]
        if length % self.stride:
            raise ValueError(f"MaskedConv1D: length {length} is not divisible by stride {self.stride}")
        out_mask = mask[:, :, :: self.stride]  # (B, 1, T // s): nearest-neighbour downsampling
        x = time_major(x)
        if not input_masked:
            x = x * mask.to(x.dtype)
        conv = self.conv
        out = F.conv2d(
            x.unsqueeze(2),  # (B, C_in, 1, T), channels-last
            conv.weight.unsqueeze(2),  # (C_out, C_in / groups, 1, k)
            conv.bias,
            (1, self.stride),
            (0, conv.padding[0]),
            1,
            conv.groups,
        ).squeeze(2)  # (B, C_out, T // s), time-major
        return out * out_mask.to(out.dtype), out_mask


class LayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, T) tensor (biased variance, eps 1e-5).

    The affine parameters keep the reference's (1, C, 1) shape so its checkpoints load as they are.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, num_channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C, T) -> (B, T, C) for the fused kernel (fp32 statistics under autocast; no copy
        # when x is time-major) -> (B, C, T) time-major
        channels = x.shape[1]
        out = F.layer_norm(
            x.transpose(1, 2), (channels,), self.weight.view(channels), self.bias.view(channels), self.eps
        )  # (B, T, C)
        return out.transpose(1, 2)  # (B, C, T)


class Scale(nn.Module):
    """A learnable scalar (init 1.0) multiplying a regression output, one per pyramid level."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init_value, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch of a sample with probability drop_prob."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)  # (B, 1, 1)
    return x / keep_prob * keep


class AffineDropPath(nn.Module):
    """LayerScale (per-channel scale, init 1e-4) followed by stochastic depth, as the reference."""

    def __init__(self, num_dim: int, drop_prob: float, init_scale_value: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(init_scale_value * torch.ones(1, num_dim, 1))  # (1, C, 1)
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(self.scale * x, self.drop_prob, self.training)  # (B, C, T)


def sinusoid_encoding(length: int, dim: int) -> Tensor:
    """Sinusoidal position table (1, dim, length): sin on even channels, cos on odd, base 10000."""
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (T, 1)
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim  # (C,)
    angle = position / torch.pow(10000.0, exponent)  # (T, C)
    table = torch.empty(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32).T.unsqueeze(0)  # (1, C, T)


class MaskedMHCA(nn.Module):
    """Multi-head conv-attention (reference MaskedMHCA / LocalMaskedMHCA).

    q, k and v each pass a depthwise conv (kernel 3, or stride + 1 when strided; no bias) and
    their own LayerNorm before the 1x1 projections; the convs give relative position and do the
    downsampling. ``window_size`` > 1 selects local attention, otherwise global.
    Reference quirk kept: the query conv's kernel follows the query stride but its stride is the
    key/value stride (the two are always equal in ActionFormer, so one ``stride`` is taken here).
    """

    def __init__(self, n_embd: int, n_head: int, window_size: int, stride: int = 1, proj_pdrop: float = 0.0) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"embedding dim {n_embd} is not divisible by {n_head} heads")
        if stride > 1 and stride % 2:
            raise ValueError(f"attention downsampling stride must be 1 or even, got {stride}")
        if window_size > 1 and window_size % 2 == 0:
            raise ValueError(f"local attention window must be odd, got {window_size}")
        self.n_head = n_head
        self.window_size = window_size
        kernel = stride + 1 if stride > 1 else 3

        def depthwise() -> MaskedConv1D:
            return MaskedConv1D(n_embd, n_embd, kernel, stride=stride, groups=n_embd, bias=False)

        self.query_conv, self.query_norm = depthwise(), LayerNorm(n_embd)
        self.key_conv, self.key_norm = depthwise(), LayerNorm(n_embd)
        self.value_conv, self.value_norm = depthwise(), LayerNorm(n_embd)
        self.key = PointwiseConv1d(n_embd, n_embd)
        self.query = PointwiseConv1d(n_embd, n_embd)
        self.value = PointwiseConv1d(n_embd, n_embd)
        self.proj = PointwiseConv1d(n_embd, n_embd)
        self.proj_drop = nn.Dropout(proj_pdrop)  # attention-map dropout is 0 in the reference: omitted

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # x: (B, C, T); mask: (B, 1, T) bool
        batch, channels, _ = x.shape
        x = time_major(x) * mask.to(x.dtype)  # masked once for the three convs
        q, out_mask = self.query_conv(x, mask, input_masked=True)  # (B, C, T'), (B, 1, T')
        k, _ = self.key_conv(x, mask, input_masked=True)  # (B, C, T')
        v, _ = self.value_conv(x, mask, input_masked=True)  # (B, C, T')
        q = self.query(self.query_norm(q))  # (B, C, T')
        k = self.key(self.key_norm(k))
        v = self.value(self.value_norm(v))

        def heads(t: Tensor) -> Tensor:  # (B, H * d, T') time-major -> (B, H, T', d) view
            return t.transpose(1, 2).view(batch, -1, self.n_head, channels // self.n_head).transpose(1, 2)

        kv_mask = out_mask[:, 0, :]  # (B, T')
        if self.window_size > 1:
            out = band_attention(heads(q), heads(k), heads(v), kv_mask, self.window_size)
        else:
            out = global_attention(heads(q), heads(k), heads(v), kv_mask)  # (B, H, T', d)
        out = out.transpose(1, 2).reshape(batch, -1, channels).transpose(1, 2)  # (B, C, T') time-major
        out = self.proj_drop(self.proj(out)) * out_mask.to(out.dtype)  # (B, C, T')
        return out, out_mask


class TransformerBlock(nn.Module):
    """Pre-LN transformer block; with stride > 1 it also halves the sequence (reference §3.5).

    x' = skip(x) + DropPath(Attn(LN1(x))); out = x' + DropPath(MLP(LN2(x')))
    where skip is max-pooling (kernel stride + 1) when strided. When droppath > 0 each DropPath
    carries a LayerScale (init 1e-4); with droppath == 0 both disappear, exactly as the reference.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        window_size: int,
        stride: int = 1,
        proj_pdrop: float = 0.0,
        path_pdrop: float = 0.0,
    ) -> None:
        super().__init__()
        self.ln1 = LayerNorm(n_embd)
        self.ln2 = LayerNorm(n_embd)
        self.attn = MaskedMHCA(n_embd, n_head, window_size, stride, proj_pdrop)
        self.stride = stride
        self.mlp = nn.Sequential(  # indices match the reference's state dict
            PointwiseConv1d(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Dropout(proj_pdrop),
            PointwiseConv1d(4 * n_embd, n_embd),
            nn.Dropout(proj_pdrop),
        )
        if path_pdrop > 0.0:
            self.drop_path_attn: nn.Module = AffineDropPath(n_embd, path_pdrop)
            self.drop_path_mlp: nn.Module = AffineDropPath(n_embd, path_pdrop)
        else:
            self.drop_path_attn = nn.Identity()
            self.drop_path_mlp = nn.Identity()

    def pool_skip(self, x: Tensor) -> Tensor:
        """Max-pooling (kernel stride + 1) of the skip path when strided, as a channels-last
        MaxPool2d (MaxPool1d would return channels-first storage)."""
        if self.stride == 1:
            return x
        s = self.stride
        return F.max_pool2d(time_major(x).unsqueeze(2), (1, s + 1), (1, s), (0, (s + 1) // 2)).squeeze(2)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # x: (B, C, T); mask: (B, 1, T) bool
        out, out_mask = self.attn(self.ln1(x), mask)  # (B, C, T'), (B, 1, T')
        keep = out_mask.to(out.dtype)  # (B, 1, T')
        # the pool's windows never reach past T, so padded steps (0 after a block, a constant
        # after the embedding) are the same whatever the padding amount
        out = self.pool_skip(x) * keep + self.drop_path_attn(out)  # (B, C, T')
        return out + self.drop_path_mlp(self.mlp(self.ln2(out)) * keep), out_mask
