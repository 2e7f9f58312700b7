"""Training checkpoints: everything needed to resume exactly, loadable without unpickling code.

A checkpoint is a plain ``torch.save`` dict of tensors, numbers, strings and lists, so
``torch.load(weights_only=True)`` reads it: a downloaded checkpoint cannot execute code. Its
inference part (and the atomic writer and the reader) live in ``localization.model.weights``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from localization.config.loading import to_dict
from localization.config.schema import RunConfig


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, Python, NumPy) as weights_only-safe values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
        "python_pos": random.getstate()[2] or 0,
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), state["python_pos"] or None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))


def checkpoint_state(
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_norm: float,
    epoch: int,
    cfg: RunConfig,
    class_names: list[str],
    input_dim: int,
) -> dict[str, Any]:
    """The checkpoint dict (see module docstring for what loads it)."""
    return {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loss_norm": float(loss_norm),
        "rng": rng_state(),
        "epoch": int(epoch),
        "config": to_dict(cfg),
        "class_names": list(class_names),
        "input_dim": int(input_dim),
    }
