"""SlowFast R50 / R101: the Kinetics-400 checkpoint layout, reference features, strict loading.

Fixtures (data, not code): ``*_k400_state_layout.json`` is the state-dict layout of PyTorchVideo's
hub model (``[[key, shape, dtype], ...]`` in order, the 400-way head included);
``*_seeded0_pooled_feature.json`` holds that reference model's pooled 2304-d feature (eval mode,
projection removed) with the seed-0 weights of ``seeded_state`` on the seed-0 clip below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from localization import api
from localization.errors import InputError
from localization.video.slowfast import FEATURE_DIM, SlowFast
from localization.video.weights import Layout, reference_layout, seeded_state

FIXTURES = Path(__file__).parent / "fixtures"
# parameters without the head's projection (2304 x 400 + 400), as counted on the reference models
PARAMETERS = {"slowfast_r50": 33_644_488, "slowfast_r101": 61_904_968}


def fixture_layout(name: str) -> Layout:
    entries = json.loads((FIXTURES / f"{name}_k400_state_layout.json").read_text())
    return [(key, tuple(shape), getattr(torch, dtype)) for key, shape, dtype in entries]


def seeded_clip(seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's check clip: fast [1, 3, 32, size, size] ~ N(0, 1) (generator seeded 1000 + seed)."""
    fast = torch.randn(1, 3, 32, size, size, generator=torch.Generator().manual_seed(1000 + seed))
    return fast[:, :, ::4].contiguous(), fast


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_layout_and_parameters_match_the_checkpoints(name: str) -> None:
    model = SlowFast(name)
    assert [(k, s) for k, s, _ in reference_layout(model)] == [(k, s) for k, s, _ in fixture_layout(name)]
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_seeded_weights_reproduce_the_reference_feature(name: str) -> None:
    """One 224 x 224 forward per model (R50 ~2.3 s, R101 ~3 s on one thread of the build machine)."""
    expected = torch.tensor(
        json.loads((FIXTURES / f"{name}_seeded0_pooled_feature.json").read_text())["cases"][0]["feature"]
    )
    model = api.load_backbone(name, None)  # seed 0: the same draws as seeded_state(fixture layout, 0)
    assert not model.training
    slow, fast = seeded_clip(0, 224)
    with torch.no_grad():
        feature = model(slow, fast)
    assert feature.shape == (1, FEATURE_DIM)
    assert (feature[0] - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_any_frame_size_gives_one_pooled_feature() -> None:
    model = api.load_backbone("slowfast_r50", None)
    slow, fast = seeded_clip(1, 40)
    with torch.no_grad():
        assert model(slow.expand(2, -1, -1, -1, -1), fast.expand(2, -1, -1, -1, -1)).shape == (2, FEATURE_DIM)


@pytest.fixture(scope="module")
def r50_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``.pyth`` in the reference layout: seeded weights (seed 3) under ``model_state``."""
    path = tmp_path_factory.mktemp("ckpt") / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": seeded_state(fixture_layout("slowfast_r50"), 3), "epoch": 196}, path)
    return path


def test_checkpoint_loads_strictly_and_drops_the_head(r50_checkpoint: Path) -> None:
    model = api.load_backbone("slowfast_r50", r50_checkpoint)
    stored = torch.load(r50_checkpoint, weights_only=True)["model_state"]
    state = model.state_dict()
    assert set(stored) - set(state) == {"blocks.6.proj.weight", "blocks.6.proj.bias"}
    assert all(torch.equal(state[key], stored[key]) for key in state)


def test_a_checkpoint_of_another_model_is_refused_with_a_named_key(r50_checkpoint: Path) -> None:
    with pytest.raises(
        InputError, match=r"SLOWFAST_8x8_R50.pyth: model_state: missing key 'blocks\.3\..*res_blocks\.6\."
    ):
        api.load_backbone("slowfast_r101", r50_checkpoint)


def test_an_extra_or_misshapen_entry_is_refused(tmp_path: Path) -> None:
    state = {key: torch.zeros(shape, dtype=dtype) for key, shape, dtype in fixture_layout("slowfast_r50")}
    torch.save({"model_state": {**state, "blocks.7.extra": torch.zeros(1)}}, tmp_path / "extra.pyth")
    with pytest.raises(InputError, match=r"extra.pyth: model_state: unexpected key 'blocks.7.extra'"):
        api.load_backbone("slowfast_r50", tmp_path / "extra.pyth")
    state["blocks.0.multipathway_fusion.conv_fast_to_slow.weight"] = torch.zeros(16, 8, 5, 1, 1)  # R101's kernel
    torch.save({"model_state": state}, tmp_path / "shape.pyth")
    with pytest.raises(InputError, match=r"shape.pyth: model_state: 'blocks.0.multipathway_fusion.*\(16, 8, 5, 1, 1\)"):
        api.load_backbone("slowfast_r50", tmp_path / "shape.pyth")
    torch.save(state, tmp_path / "bare.pyth")
    with pytest.raises(InputError, match=r"bare.pyth: backbone.weights: no 'model_state'"):
        api.load_backbone("slowfast_r50", tmp_path / "bare.pyth")
    with pytest.raises(InputError, match=r"backbone.name: 'slowfast_r18'"):
        api.load_backbone("slowfast_r18", None)
