"""Model checkpoints as inference reads them: plain ``torch.save`` dicts loaded with ``weights_only=True``.

Training writes the full checkpoint (``localization.training.checkpoints`` adds optimizer, scheduler
and RNG state to resume exactly); inference, promotion and the served model need only the part
here, so they never import the training code. A downloaded checkpoint cannot execute code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from localization.config.loading import config_from_dict
from localization.config.schema import RunConfig, output_classes
from localization.errors import DataError
from localization.model.actionformer import ActionFormer

# What inference needs from a checkpoint; the rest (optimizer, scheduler, RNG) only resumes training.
INFERENCE_KEYS = ("model", "ema", "config", "class_names", "input_dim", "epoch")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable checkpoint ({first})") from None
    missing = [k for k in INFERENCE_KEYS if k not in ckpt]
    if missing:
        raise DataError(f"{path}: checkpoint lacks {missing}")
    return ckpt


def save_inference_checkpoint(checkpoint: Path, dest: Path) -> list[str]:
    """Write ``checkpoint``'s inference part (:data:`INFERENCE_KEYS`) to ``dest``; returns its class names."""
    ckpt = load_checkpoint(checkpoint)
    save_checkpoint(dest, {key: ckpt[key] for key in INFERENCE_KEYS})
    return list(ckpt["class_names"])


def checkpoint_config(ckpt: dict[str, Any], source: str) -> RunConfig:
    """The run config stored in a checkpoint, validated like a YAML file."""
    return config_from_dict(ckpt["config"], source)


def model_from_checkpoint(
    ckpt: dict[str, Any], use_ema: bool = True, cfg: RunConfig | None = None
) -> tuple[ActionFormer, RunConfig, list[str]]:
    """Rebuild the model (EMA weights by default, as the reference evaluates) on CPU, eval mode.

    ``cfg`` may override the stored config (for example other post-processing or data paths);
    the model section must then still match the stored weights.
    """
    cfg = cfg or checkpoint_config(ckpt, "checkpoint")
    class_names = list(ckpt["class_names"])
    model = ActionFormer(
        cfg.model, ckpt["input_dim"], output_classes(cfg.model, len(class_names)), cfg.data.max_seq_len
    )
    model.load_state_dict(ckpt["ema" if use_ema else "model"])
    return model.eval(), cfg, class_names
