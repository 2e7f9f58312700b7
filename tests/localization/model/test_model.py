"""ActionFormer model: reference parameter counts, banded attention, any-length and padding-free
inference, points and optimiser groups. Tiny dimensions except where only counting."""

from __future__ import annotations

import math

import pytest
import torch

from localization.config.schema import ModelConfig
from localization.model import ActionFormer, make_points
from localization.model.attention import (
    band_attention_backend,
    blocked_attention,
    flex_band_attention,
    global_attention,
    local_attention,
    set_band_attention_backend,
)
from localization.model.blocks import MaskedMHCA
from localization.model.heads import pack_levels
from localization.training.optim import param_groups


def tiny_config(**overrides) -> ModelConfig:
    values = dict(embd_dim=16, fpn_dim=16, head_dim=16, n_head=2, n_mha_win_size=5)
    values.update(overrides)
    return ModelConfig(**values)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its initial value (LayerNorm biases, LayerScale, ...), so that
    a padded step leaking into a valid one would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def lengths_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def pad_video(feats: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, L) -> zero-padded (1, C, total) and its (1, 1, total) mask."""
    length = feats.shape[-1]
    x = torch.nn.functional.pad(feats, (0, total - length))[None]
    return x, lengths_mask([length], total)[:, None, :]


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Fidelity: parameter counts of the reference (spec §3.10)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_dim", "num_classes", "droppath", "expected"),
    [(2048, 20, 0.1, 29_251_612), (2048, 20, 0.0, 29_244_444), (1408, 106, 0.1, 28_400_754)],
)
def test_parameter_count_matches_reference(input_dim, num_classes, droppath, expected):
    cfg = ModelConfig(
        embd_dim=512, fpn_dim=512, head_dim=512, backbone_arch=[2, 2, 5], n_mha_win_size=19, droppath=droppath
    )
    model = ActionFormer(cfg, input_dim, num_classes, max_seq_len=2304)
    assert count(model) == expected
    if (input_dim, num_classes, droppath) == (2048, 20, 0.1):
        parts = [count(m) for m in (model.backbone, model.neck, model.cls_head, model.reg_head)]
        assert parts == [26_061_824, 6_144, 1_605_652, 1_577_992]
        assert model.strides == [1, 2, 4, 8, 16, 32]


def test_init_matches_reference():
    model = ActionFormer(tiny_config(), 8, 3, 64)
    assert torch.allclose(model.cls_head.cls_head.conv.bias, torch.full((3,), -math.log(99.0)))
    assert torch.all(model.reg_head.offset_head.conv.bias == 0)
    assert torch.all(model.backbone.stem[0].attn.proj.bias == 0)
    assert torch.all(model.backbone.stem[0].drop_path_attn.scale == 1e-4)  # LayerScale
    assert [s.scale.item() for s in model.reg_head.scale] == [1.0] * 6


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


def dense_reference(q, k, v, allowed):
    """Plain softmax attention; allowed: (B, Tq, Tk) bool."""
    scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(-1, -2)  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("length", [1, 6, 19, 45, 64, 101])
@pytest.mark.parametrize(("window", "chunk"), [(3, 4), (19, 32), (9, 8), (19, 5)])
def test_local_attention_equals_band_masked_dense(length, window, chunk):
    gen = torch.Generator().manual_seed(length * 100 + window)
    q, k, v = (torch.randn(3, 2, length, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    valid_lengths = [length, max(1, length // 2), max(1, length - 7)]
    kv_mask = lengths_mask(valid_lengths, length)  # (B, T)
    idx = torch.arange(length)
    band = (idx[:, None] - idx[None, :]).abs() <= window // 2  # (T, T)
    expected = dense_reference(q, k, v, band[None] & kv_mask[:, None, :])
    got = local_attention(q, k, v, kv_mask, window, chunk=chunk)
    assert got.shape == q.shape
    assert torch.isfinite(got).all()  # padded queries with no valid key in reach stay finite
    rows = kv_mask[:, None, :, None].expand_as(got)  # valid queries
    assert torch.allclose(got[rows], expected[rows], atol=1e-5)


def test_local_attention_float32_and_fully_masked_sample():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 37, 8, generator=gen) for _ in range(3))
    kv_mask = lengths_mask([30, 0], 37)
    idx = torch.arange(37)
    band = (idx[:, None] - idx[None, :]).abs() <= 9
    expected = dense_reference(q, k, v, band[None] & kv_mask[:, None, :])
    got = local_attention(q, k, v, kv_mask, 19)
    assert torch.allclose(got[0, :, :30], expected[0, :, :30], atol=1e-5)
    assert torch.isfinite(got).all()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("length", [6, 45, 101])
@pytest.mark.parametrize("kernel", ["blocks", "flex"])
def test_fused_band_backends_equal_band_masked_dense(length, kernel):
    """The CUDA backends (SDPA over query chunks, FlexAttention) give the banded kernel's values."""
    gen = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(3, 2, length, 16, generator=gen) for _ in range(3))
    kv_mask = lengths_mask([length, max(1, length // 2), 0], length)
    idx = torch.arange(length)
    band = (idx[:, None] - idx[None, :]).abs() <= 9
    expected = dense_reference(q, k, v, band[None] & kv_mask[:, None, :])
    fn = blocked_attention if kernel == "blocks" else flex_band_attention
    got = fn(q, k, v, kv_mask, 19)
    assert got.shape == q.shape and torch.isfinite(got).all()
    rows = kv_mask[:, None, :, None].expand_as(got)
    assert torch.allclose(got[rows], expected[rows], atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_band_backend_switch_gives_same_model_outputs():
    model = randomized(ActionFormer(tiny_config(n_mha_win_size=7), 6, 3, max_seq_len=128), seed=5)
    feats, masks = pad_video(torch.randn(6, 90), 128)
    assert band_attention_backend(torch.device("cpu")) == "banded"
    assert band_attention_backend(torch.device("cuda")) == "blocks"
    outputs = {}
    try:
        for name in ("banded", "blocks", "flex"):
            set_band_attention_backend(name)
            with torch.no_grad():
                outputs[name] = model(feats, masks)
    finally:
        set_band_attention_backend("auto")
    assert_same_valid_outputs(outputs["banded"], outputs["blocks"])
    assert_same_valid_outputs(outputs["banded"], outputs["flex"])
    with pytest.raises(ValueError, match="unknown band attention backend"):
        set_band_attention_backend("dense")


def test_global_attention_equals_key_masked_dense():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 23, 8, generator=gen) for _ in range(3))
    kv_mask = lengths_mask([23, 11], 23)
    expected = dense_reference(q, k, v, kv_mask[:, None, :].expand(2, 23, 23))
    assert torch.allclose(global_attention(q, k, v, kv_mask), expected, atol=1e-5)
    assert torch.isfinite(global_attention(q, k, v, lengths_mask([0, 5], 23))).all()


@pytest.mark.parametrize("stride", [1, 2])
def test_local_module_with_covering_window_equals_global_module(stride):
    """A window reaching every key is global attention: strided convs, projections, masks and
    head layout of the local path agree with the dense path end to end."""
    torch.manual_seed(3)
    local = MaskedMHCA(16, 4, window_size=2 * 40 + 1, stride=stride)
    dense = MaskedMHCA(16, 4, window_size=-1, stride=stride)
    randomized(local)
    dense.load_state_dict(local.state_dict())
    x = torch.randn(2, 16, 40)
    mask = lengths_mask([40, 27], 40)[:, None, :]
    out_local, mask_local = local(x, mask)
    out_dense, mask_dense = dense(x, mask)
    assert torch.equal(mask_local, mask_dense)
    assert mask_local.shape == (2, 1, 40 // stride)
    assert torch.allclose(out_local, out_dense, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Whole model: any length, padding independence
# --------------------------------------------------------------------------------------------


def test_any_length_inference_with_window_19():
    """1504 = 47 * 32 is not a multiple of the reference's max_div_factor (576) yet runs whole."""
    model = randomized(ActionFormer(tiny_config(n_mha_win_size=19), 12, 4, max_seq_len=256))
    feats, masks = pad_video(torch.randn(12, 1490), 1504)
    with torch.no_grad():
        out = model(feats, masks)
    assert [x.shape for x in out.cls_logits] == [(1, 1504 // s, 4) for s in model.strides]
    assert [x.shape for x in out.offsets] == [(1, 1504 // s, 2) for s in model.strides]
    for s, m, off, logit in zip(model.strides, out.masks, out.offsets, out.cls_logits, strict=True):
        assert torch.equal(m[0], torch.arange(1504 // s) < -(-1490 // s))
        assert torch.isfinite(logit).all() and (off >= 0).all()


def test_rejects_length_not_divisible_by_coarsest_stride():
    model = ActionFormer(tiny_config(), 8, 2, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.zeros(1, 8, 100), torch.ones(1, 1, 100, dtype=torch.bool))


def assert_same_valid_outputs(a, b, index_a=0, index_b=0):
    for m_a, m_b, la, lb, oa, ob in zip(
        a.masks, b.masks, a.cls_logits, b.cls_logits, a.offsets, b.offsets, strict=True
    ):
        n = int(m_a[index_a].sum())
        assert n == int(m_b[index_b].sum())
        assert m_a[index_a, :n].all() and m_b[index_b, :n].all()
        assert torch.allclose(la[index_a, :n], lb[index_b, :n], atol=1e-5)
        assert torch.allclose(oa[index_a, :n], ob[index_b, :n], atol=1e-5)
        # padded locations are zeroed, never garbage
        assert (la[index_a, n:] == 0).all() and (oa[index_a, n:] == 0).all()


@pytest.mark.parametrize(
    ("length", "short", "long", "overrides"),
    [
        (100, 128, 320, {}),
        (128, 128, 256, {}),  # unpadded vs padded: the reference differs here, we must not
        (77, 96, 192, {"droppath": 0.0, "n_mha_win_size": [5, 5, 3, 3, -1, -1]}),
        (50, 64, 128, {"use_abs_pe": True}),
    ],
)
def test_outputs_do_not_depend_on_padding(length, short, long, overrides):
    model = randomized(ActionFormer(tiny_config(**overrides), 6, 3, max_seq_len=128), seed=length)
    video = torch.randn(6, length, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        out_short = model(*pad_video(video, short))
        out_long = model(*pad_video(video, long))
    assert_same_valid_outputs(out_short, out_long)


def test_batch_equals_single_videos():
    model = randomized(ActionFormer(tiny_config(), 6, 3, max_seq_len=128), seed=7)
    gen = torch.Generator().manual_seed(7)
    videos = [torch.randn(6, n, generator=gen) for n in (70, 128, 33)]
    feats = torch.stack([torch.nn.functional.pad(v, (0, 128 - v.shape[-1])) for v in videos])
    masks = lengths_mask([70, 128, 33], 128)[:, None, :]
    with torch.no_grad():
        batched = model(feats, masks)
        for i, video in enumerate(videos):
            single = model(*pad_video(video, -(-video.shape[-1] // 32) * 32))
            assert_same_valid_outputs(batched, single, index_a=i)


def test_heads_packed_levels_equal_one_level_at_a_time():
    model = randomized(ActionFormer(tiny_config(), 6, 3, max_seq_len=64), seed=4)
    feats = [torch.randn(2, 16, n) for n in (64, 32, 16)]
    masks = [lengths_mask([n, n // 2], n)[:, None, :] for n in (64, 32, 16)]
    together = model.cls_head(pack_levels(feats, masks, gap=1))
    for level in range(3):
        alone = model.cls_head(pack_levels(feats[level : level + 1], masks[level : level + 1], gap=1))
        assert torch.allclose(together[level], alone[0], atol=1e-6)


def test_training_step_with_padding_has_finite_gradients():
    model = ActionFormer(tiny_config(dropout=0.1), 6, 3, max_seq_len=64).train()
    feats = torch.randn(2, 6, 64)
    masks = lengths_mask([64, 21], 64)[:, None, :]
    out = model(feats, masks)
    loss = sum(x.sum() for x in out.cls_logits) + sum(x.sum() for x in out.offsets)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.backbone.embd[0].conv.weight.grad.abs().sum() > 0


def test_bf16_autocast_forward_is_finite():
    model = randomized(ActionFormer(tiny_config(), 6, 3, max_seq_len=64))
    feats, masks = pad_video(torch.randn(6, 50), 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(feats, masks)
    assert all(torch.isfinite(x.float()).all() for x in out.cls_logits + out.offsets)


# --------------------------------------------------------------------------------------------
# Points and optimiser groups
# --------------------------------------------------------------------------------------------


def test_make_points_hand_case():
    points = make_points([4, 2, 1], [1, 2, 4], [[0, 4], [4, 8], [8, 10000]], "cpu")
    expected = torch.tensor(
        [
            [0, 0, 4, 1],
            [1, 0, 4, 1],
            [2, 0, 4, 1],
            [3, 0, 4, 1],
            [0, 4, 8, 2],
            [2, 4, 8, 2],
            [0, 8, 10000, 4],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(points, expected)


def test_make_points_unbounded_length():
    points = make_points([20000, 10000], [1, 2], [[0, 4], [4, 8]], "cpu")
    assert points.shape == (30000, 4)
    assert points[19999, 0] == 19999 and points[-1, 0] == 19998


def test_param_groups_split():
    model = ActionFormer(tiny_config(use_abs_pe=True), 6, 3, max_seq_len=64)
    groups = param_groups(model, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    ids = [[id(p) for p in g["params"]] for g in groups]
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(id(p) for p in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[i] for i in ids[0]}
    no_decay = {names[i] for i in ids[1]}
    assert "backbone.embd.0.conv.weight" in decay
    assert "backbone.stem.0.attn.query_conv.conv.weight" in decay  # depthwise conv
    assert "backbone.stem.0.mlp.0.weight" in decay
    assert "cls_head.cls_head.conv.weight" in decay
    assert {
        "backbone.stem.0.ln1.weight",
        "backbone.stem.0.mlp.0.bias",
        "neck.fpn_norms.0.weight",
        "backbone.stem.0.drop_path_attn.scale",
        "reg_head.scale.0.scale",
        "cls_head.cls_head.conv.bias",
    } <= no_decay
    assert all(n.endswith("weight") for n in decay)
    assert "backbone.pos_embd" in dict(model.named_buffers())  # a buffer, not optimised
    torch.optim.AdamW(groups, lr=1e-4)


def test_param_groups_rejects_unclassified_parameter():
    model = torch.nn.Module()
    model.mystery = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="mystery"):
        param_groups(model, 0.05)
