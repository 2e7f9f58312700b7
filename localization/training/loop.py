"""The training loop of one ActionFormer (``localization.api.train`` is the door to it).

``train`` runs the reference recipe (AdamW with the reference's weight-decay groups, linear
warm-up then cosine decay stepped per iteration, gradient clipping, EMA of weights evaluated
every ``train.eval_every`` epochs) and reports each epoch to a callback that may stop it.
Every epoch ends with a checkpoint from which training resumes exactly.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from localization.config.schema import RunConfig, TestConfig, inference_div_factor, output_classes
from localization.data.annotations import SubsetAnnotations, load_subset, restrict_videos
from localization.data.dataset import TrainingDataset, build_loader
from localization.data.features import FeatureReader
from localization.data.report import data_warnings
from localization.device import autocast, resolve_device
from localization.inference.evaluation import EvalResult, SubsetEvaluator, SubsetScorer, subset_evaluator
from localization.metrics import metrics_as_floats
from localization.model import ActionFormer, make_points
from localization.model.weights import load_checkpoint, save_checkpoint
from localization.training.checkpoints import checkpoint_state, set_rng_state
from localization.training.losses import LossNormalizer, compute_losses
from localization.training.optim import ModelEma, build_scheduler, param_groups
from localization.training.targets import assign_targets


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


@dataclass
class EpochReport:
    """What the ``on_epoch`` callback receives after every epoch."""

    epoch: int  # 1-based
    metrics: dict[str, float]  # losses, lr, epoch time; mAP keys (percent) when evaluated
    evaluated: bool
    checkpoint: Path  # written at the end of this epoch
    predictions: dict[str, Any] | None  # validation detections (submission format) when evaluated
    test: TestConfig | None = None  # the post-processing the evaluation used (see ``train``'s choose_test)


@dataclass
class TrainResult:
    epochs_completed: int
    stopped_early: bool
    checkpoint: Path
    last_eval: EvalResult | None
    metrics: dict[str, float]  # the last epoch's


OnEpoch = Callable[[EpochReport], bool | None]


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every global RNG; with the same seed, CPU training gives the same result.

    Deterministic kernels are requested on CPU only: on CUDA they would slow training (the
    reference requests them everywhere), and GPU runs are reproducible only up to atomics.
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def load_training_subset(cfg: RunConfig) -> SubsetAnnotations:
    """The training videos: ``data.train_subset``, cut to ``data.train_videos`` when given."""
    annotations = load_subset(cfg.data, cfg.data.train_subset)
    if cfg.data.train_videos:
        annotations = restrict_videos(annotations, cfg.data.train_videos, "data.train_videos")
    return annotations


def train(
    cfg: RunConfig,
    out_dir: Path,
    on_epoch: OnEpoch | None = None,
    resume: Path | None = None,
    log: Callable[[str], None] = print,
    choose_test: Callable[[SubsetScorer], TestConfig] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one model; write ``out_dir/checkpoint.pt`` after every epoch.

    ``should_stop`` is asked between training steps and before each evaluation; when it answers
    True the run ends there (no checkpoint of the unfinished epoch, no report): a host that must
    shut down (a search's worker whose trial was stopped) ends the run at a step boundary rather
    than killing a thread inside a tensor operation, which aborts the whole process.

    ``choose_test`` picks the post-processing of every evaluation from the model's raw candidates
    (a post-processing search; default: ``cfg.test``); the epoch's report says which.

    ``resume`` continues from a checkpoint (model, EMA, optimizer, scheduler, loss normaliser,
    RNG states, epoch) exactly where it stopped. Raises :class:`TrainingDiverged` on a NaN or
    infinite loss, and ``localization.errors.InputError`` on bad data before any training.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / "checkpoint.pt"
    device = _set_up_device(cfg)
    state = _build(cfg, device)  # data first, then the model: the seeded RNG order of every run
    for warning in data_warnings({ds.annotations.subset: ds for ds in (state.train_set, state.evaluator.dataset)}):
        log(f"warning: {warning}")  # a wrong fps or time grid (localization.data.report)
    start_epoch = _resume(state, resume, log) if resume is not None else 0

    last_eval: EvalResult | None = None
    metrics: dict[str, float] = {}
    stopped_early = False
    epoch = start_epoch
    stop = should_stop or (lambda: False)
    for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
        started = time.perf_counter()
        epoch_metrics = _train_epoch(state, cfg, epoch, stop)
        if stop():  # the unfinished epoch is dropped: the result is the last completed one's
            return TrainResult(epoch - 1, True, checkpoint_path, last_eval, metrics)
        metrics = epoch_metrics
        evaluated = epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs
        test = None
        if evaluated:
            log(f"epoch {epoch:>3}/{cfg.train.epochs}  evaluating on {len(state.evaluator.dataset)} videos")
            scorer = state.evaluator.run(state.ema.module, device)
            test = choose_test(scorer) if choose_test is not None else cfg.test
            last_eval = scorer.result(test)
            if last_eval.metrics is not None:
                metrics.update(metrics_as_floats(last_eval.metrics))
        metrics["epoch_time_s"] = time.perf_counter() - started
        save_checkpoint(checkpoint_path, _checkpoint(state, cfg, epoch))
        log(_progress_line(epoch, cfg.train.epochs, metrics))
        predictions = last_eval.predictions if evaluated and last_eval else None
        report = EpochReport(epoch, dict(metrics), evaluated, checkpoint_path, predictions, test)
        if on_epoch is not None and on_epoch(report):
            stopped_early = epoch < cfg.train.epochs
            break
    return TrainResult(epoch, stopped_early, checkpoint_path, last_eval, metrics)


@dataclass
class _TrainingState:
    """Everything one training run updates or reads each epoch."""

    device: torch.device
    train_set: TrainingDataset
    loader: Any  # torch DataLoader
    evaluator: SubsetEvaluator
    class_names: list[str]
    input_dim: int
    model: ActionFormer
    forward: Callable  # the model, compiled on CUDA when train.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: ModelEma
    normalizer: LossNormalizer


def _set_up_device(cfg: RunConfig) -> torch.device:
    """The device, torch's CPU threads and every RNG seeded, before anything random happens."""
    device = resolve_device(cfg.train.device)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.train.seed, device)
    return device


def _build(cfg: RunConfig, device: torch.device) -> _TrainingState:
    """Data (training crops, validation evaluator), then model, AdamW, schedule, EMA, loss normaliser."""
    reader = FeatureReader(cfg.data)
    train_ann = load_training_subset(cfg)
    train_set = TrainingDataset(cfg.data, train_ann, reader, seed=cfg.train.seed)
    evaluator = subset_evaluator(cfg, cfg.data.val_subset, reader)
    class_names = train_ann.class_names
    loader = build_loader(
        train_set,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        pad_multiple=inference_div_factor(cfg.model),
        drop_last=len(train_set) > cfg.train.batch_size,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise RuntimeError("the training subset yields no batches")

    num_outputs = output_classes(cfg.model, len(class_names))
    model = ActionFormer(cfg.model, reader.dim, num_outputs, cfg.data.max_seq_len).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    scheduler = build_scheduler(
        optimizer, cfg.train.warmup_epochs * steps_per_epoch, cfg.train.epochs * steps_per_epoch, cfg.train.eta_min
    )
    ema = ModelEma(model, cfg.train.ema_decay)
    normalizer = LossNormalizer(cfg.model.init_loss_norm)
    forward = torch.compile(model) if cfg.train.compile and device.type == "cuda" else model
    return _TrainingState(
        device,
        train_set,
        loader,
        evaluator,
        class_names,
        reader.dim,
        model,
        forward,
        optimizer,
        scheduler,
        ema,
        normalizer,
    )


def _resume(state: _TrainingState, resume: Path, log: Callable[[str], None]) -> int:
    """Load model, EMA, optimizer, schedule, loss normaliser and RNG states; returns the epoch done."""
    ckpt = load_checkpoint(resume)
    state.model.load_state_dict(ckpt["model"])
    state.ema.module.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.normalizer.load_state_dict(ckpt["loss_norm"])
    set_rng_state(ckpt["rng"])
    start_epoch = int(ckpt["epoch"])
    log(f"resumed from {resume} at epoch {start_epoch}")
    return start_epoch


def _train_epoch(state: _TrainingState, cfg: RunConfig, epoch: int, stop: Callable[[], bool]) -> dict[str, float]:
    """One pass over the training crops; returns the epoch's mean losses and its last lr (partial
    when ``stop`` ends it early: the caller discards such an epoch)."""
    state.train_set.set_epoch(epoch)
    state.model.train()
    sums = torch.zeros(3, dtype=torch.float64)
    for step, batch in enumerate(state.loader, start=1):
        if stop():
            break
        losses = train_step(
            state.forward,
            state.model,
            batch,
            state.device,
            cfg,
            state.optimizer,
            state.normalizer,
            output_classes(cfg.model, len(state.class_names)),
        )
        if not math.isfinite(losses[2]):
            raise TrainingDiverged(
                f"loss became {losses[2]} at epoch {epoch}, step {step} "
                f"(cls_loss {losses[0]:.4g}, reg_loss {losses[1]:.4g}, lr {state.scheduler.get_last_lr()[0]:.3g})"
            )
        state.scheduler.step()
        state.ema.update()
        sums += torch.tensor(losses, dtype=torch.float64)
    sums /= len(state.loader)
    return {
        "loss": float(sums[2]),
        "cls_loss": float(sums[0]),
        "reg_loss": float(sums[1]),
        "lr": float(state.scheduler.get_last_lr()[0]),
    }


def _checkpoint(state: _TrainingState, cfg: RunConfig, epoch: int) -> dict[str, Any]:
    return checkpoint_state(
        model=state.model,
        ema=state.ema.module,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        loss_norm=state.normalizer.value,
        epoch=epoch,
        cfg=cfg,
        class_names=state.class_names,
        input_dim=state.input_dim,
    )


def train_step(
    forward: Callable,
    model: ActionFormer,
    batch: dict[str, Any],
    device: torch.device,
    cfg: RunConfig,
    optimizer: torch.optim.Optimizer,
    normalizer: LossNormalizer,
    num_classes: int,
) -> tuple[float, float, float]:
    """One optimizer step (forward, targets, losses, backward, clipping, update); returns
    (cls_loss, reg_loss, final_loss) as floats. The caller steps the schedule and the EMA."""
    feats = batch["feats"].to(device, non_blocking=True).float()  # (B, C, T); float16 store features cross as such
    masks = batch["masks"].to(device, non_blocking=True)  # (B, 1, T)
    segments = [s.to(device) for s in batch["segments"]]
    labels = [lab.to(device) for lab in batch["labels"]]
    if cfg.model.class_agnostic:  # every action is the one foreground class
        labels = [torch.zeros_like(lab) for lab in labels]
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, cfg.train.bf16):
        out = forward(feats, masks)
    points = make_points([m.shape[1] for m in out.masks], model.strides, cfg.model.regression_range, device)
    cls_targets, reg_targets = assign_targets(
        points, segments, labels, num_classes, cfg.model.center_sample, cfg.model.center_sample_radius
    )
    losses = compute_losses(out, cls_targets, reg_targets, normalizer, cfg.model)
    values = torch.stack([losses["cls_loss"], losses["reg_loss"], losses["final_loss"]])
    cls_loss, reg_loss, final_loss = values.detach().float().tolist()  # the step's one device sync
    if math.isfinite(final_loss):  # else the caller raises; the weights stay as they were
        losses["final_loss"].backward()
        if cfg.train.clip_grad_l2norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_l2norm)
        optimizer.step()
    return cls_loss, reg_loss, final_loss


def _progress_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    line = (
        f"epoch {epoch:>3}/{epochs}  loss {metrics['loss']:.4f} (cls {metrics['cls_loss']:.4f} "
        f"reg {metrics['reg_loss']:.4f})  lr {metrics['lr']:.2e}"
    )
    if "average_mAP" in metrics:
        line += f"  val mAP {metrics['average_mAP']:.2f}"
        for key in ("mAP_0.50", "mAP_0.75", "mAP_0.95"):
            if key in metrics:
                line += f" @{key[4:]} {metrics[key]:.2f}"
    return line + f"  ({metrics['epoch_time_s']:.1f}s)"


def build_model_for_data(cfg: RunConfig) -> tuple[ActionFormer, str]:
    """The model ``cfg`` would train (input dim and classes from the data) and a data summary."""
    reader = FeatureReader(cfg.data)
    train_ann = load_training_subset(cfg)
    num_outputs = output_classes(cfg.model, len(train_ann.class_names))
    model = ActionFormer(cfg.model, reader.dim, num_outputs, cfg.data.max_seq_len)
    summary = (
        f"data: {len(train_ann.videos)} {cfg.data.train_subset} videos, "
        f"{len(train_ann.class_names)} classes, input dim {reader.dim} "
        f"({' + '.join(cfg.data.features)})"
    )
    return model, summary
