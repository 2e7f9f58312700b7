"""SlowFast weights: a Kinetics-400 ``.pyth`` checkpoint loaded strictly, or deterministic seeded weights.

A checkpoint of another model must be refused, not half-loaded (its features would be silently
wrong), so the file's ``model_state`` must hold exactly the reference layout: the backbone's entries
plus the 400-way head's projection, which is checked and dropped. Seeded weights (``weights=None``)
are for tests and dry runs: they follow a fixed recipe so that any faithful implementation of the
same layout computes the same features from them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from localization.errors import InputError
from localization.video.slowfast import BACKBONES, HEAD_ENTRIES, SlowFast

Layout = list[tuple[str, tuple[int, ...], torch.dtype]]


def reference_layout(model: SlowFast) -> Layout:
    """The checkpoint's entries in state-dict order: the model's, then the head's projection."""
    layout = [(key, tuple(t.shape), t.dtype) for key, t in model.state_dict().items()]
    return layout + [(key, shape, torch.float32) for key, shape in HEAD_ENTRIES.items()]


def seeded_state(layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic weights: every entry drawn from one generator seeded ``seed``, in layout order.

    Conv / linear weights: normal x sqrt(2 / fan_in) (He), fan_in = prod(shape[1:]); BatchNorm (a
    module with a running_mean): weight 1 + 0.1 normal, bias and running_mean 0.1 normal, running_var
    1 + 0.1 uniform[0, 1); int64 counters 0; any other entry (a linear bias) 0.01 normal. Far from
    trained weights, but every layer is exercised with a non-trivial value.
    """
    generator = torch.Generator().manual_seed(seed)
    batchnorms = {key.rsplit(".", 1)[0] for key, _, _ in layout if key.endswith(".running_mean")}
    state = {}
    for key, shape, dtype in layout:
        module, leaf = key.rsplit(".", 1)
        if dtype == torch.int64:
            value = torch.zeros(shape, dtype=torch.int64)
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=generator) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif module in batchnorms and leaf == "weight":
            value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif module in batchnorms and leaf in ("bias", "running_mean"):
            value = 0.1 * torch.randn(shape, generator=generator)
        elif module in batchnorms and leaf == "running_var":
            value = 1.0 + 0.1 * torch.rand(shape, generator=generator)
        else:
            value = 0.01 * torch.randn(shape, generator=generator)
        state[key] = value
    return state


def read_checkpoint(path: Path, layout: Layout) -> dict[str, torch.Tensor]:
    """The ``model_state`` of a ``.pyth`` file, checked against ``layout`` (one-line InputError naming
    the file and the first missing, unexpected or misshapen entry)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: backbone.weights: no such file") from None
    except Exception as exc:  # unpickling, zip and size errors (weights_only refuses code)
        raise InputError(f"{path}: backbone.weights: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(content, dict) or not isinstance(content.get("model_state"), dict):
        raise InputError(f"{path}: backbone.weights: no 'model_state' dict (not a PyTorchVideo checkpoint)")
    state = content["model_state"]
    expected = {key: shape for key, shape, _ in layout}
    missing = [key for key in expected if key not in state]
    if missing:
        raise InputError(f"{path}: model_state: missing key {missing[0]!r} ({len(missing)} missing)")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise InputError(f"{path}: model_state: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InputError(f"{path}: model_state: {key!r} has shape {got}, expected {shape}")
    return state


def load_backbone(name: str, weights: str | Path | None, seed: int = 0) -> SlowFast:
    """SlowFast ``name`` (slowfast_r50, slowfast_r101) in eval mode, from a ``.pyth`` checkpoint or, with
    ``weights=None``, from :func:`seeded_state` (tests and dry runs only: the features mean nothing)."""
    if name not in BACKBONES:
        raise InputError(f"backbone.name: {name!r} is not one of {list(BACKBONES)}")
    with torch.device("meta"):  # shapes only: every value comes from the state below
        model = SlowFast(name)
    layout = reference_layout(model)
    state = seeded_state(layout, seed) if weights is None else read_checkpoint(Path(weights), layout)
    # float32 whatever the file stored (assign keeps the given tensors as they are)
    backbone = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k not in HEAD_ENTRIES}
    model.load_state_dict(backbone, strict=True, assign=True)
    return model.eval()
