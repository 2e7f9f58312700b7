"""AdamW parameter groups of the reference (minGPT style, reference train_utils.make_optimizer)."""

from __future__ import annotations

from typing import Any

from torch import nn

from localization.model.blocks import AffineDropPath, LayerNorm, Scale

_DECAY_MODULES = (nn.Linear, nn.Conv1d)  # MaskedConv1D holds its weight in a child nn.Conv1d
_NO_DECAY_MODULES = (LayerNorm, Scale, AffineDropPath)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """[{decayed params, weight_decay}, {the rest, 0.0}] for torch.optim.AdamW.

    Decay: the weights of Linear / Conv1d (so of every MaskedConv1D). No decay: all biases,
    LayerNorm weights, the ``scale`` of Scale and AffineDropPath (the reference also exempts
    ``rel_pe``, which we do not implement). The absolute position table is a buffer and never
    reaches the optimizer. A parameter that fits no rule is a bug: it raises.
    """
    decay, no_decay = [], []
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "weight" and isinstance(module, _DECAY_MODULES):
                decay.append(param)
            elif name == "bias" or isinstance(module, _NO_DECAY_MODULES):
                no_decay.append(param)
            else:
                raise ValueError(f"param_groups: no weight-decay rule for {module_name}.{name}")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
