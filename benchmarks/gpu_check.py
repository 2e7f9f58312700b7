"""The GPU path in one script: training steps (fp32 / bf16, eager / torch.compile), whole-video and
validation inference, and two small searches (one GPU per trial, then two trials per GPU).

    python benchmarks/gpu_check.py --out gpu_check/                 # on a CUDA machine, a few minutes
    python benchmarks/gpu_check.py --device cpu --tiny --out DIR    # everything on CPU, tiny sizes

Writes ``DIR/gpu_check.json`` (every number, the machine, the command) and ``DIR/gpu_check.md``
(the table for BENCHMARKS.md), and exits 1 if a check fails:

- train steps: the THUMOS-size step (input 2048, 512-d, T 2304, batch 2) and the FineAction-size
  one (configs/fineaction.yaml: input 4352, batch 4, FineAction lengths, padded to the batch's
  longest video), each in fp32 and bf16 autocast, eager and ``torch.compile``d, on the same
  batches from the same initial weights; check: every bf16 step loss within ``--bf16-tolerance``
  (relative) of the fp32 loss of the same step;
- attention: the level-0 local attention of the THUMOS-size model (B 2, 4 heads, T 2304, head
  dim 128, window 19), forward + backward, with each backend of
  ``localization.model.attention.BAND_BACKENDS`` (banded, blocks: SDPA over query chunks, flex:
  FlexAttention, compiled, CUDA only); check: each agrees with ``banded``; reported: the fastest and
  the one ``auto`` picks on this device (``set_band_attention_backend`` chooses another);
- longest video: inference of one 14,208-step video (FineAction's longest) and its post-processing;
- validation: inference + post-processing of a FineAction-sized validation set (4,174 videos,
  FineAction lengths, random features) through the science's ``predict`` and ``detect``;
- searches: the demo search, two trials, ``resources.gpu: 1`` then ``0.5`` (check: the second runs
  both trials at once on one GPU); peak memory from each trial run's MLflow system metrics.

On CPU the bf16 steps run under CPU autocast (the science's autocast is CUDA-only), the searches run
on a local Ray that declares one GPU as a resource (the trials train on CPU, as in the tests), and
"peak memory" is the process's peak RSS (train, inference) or the node's RAM (searches).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from training_speed import (
    LONGEST_VIDEO_STEPS,
    fineaction_lengths,
    make_batch,
    sync,
    time_longest_video,
    time_training,
)

from localization.config.loading import load_config
from localization.config.schema import RunConfig, inference_div_factor
from localization.data.annotations import SubsetAnnotations, VideoAnnotation
from localization.data.dataset import InferenceDataset
from localization.data.features import TimedVideo, VideoLayout
from localization.data.timegrid import Grid
from localization.inference.prediction import detect, predict
from localization.model import attention

REPO = Path(__file__).resolve().parents[1]
FINEACTION_VAL_VIDEOS = 4174  # FineAction's validation subset
THUMOS_CLASSES = 20
NODE_MEMORY_METRIC = "system/system_memory_usage_megabytes"  # MLflow's name; GPUs: system/gpu_<i>_memory_...


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each part runs at: the real sizes, or tiny ones for a CPU check in seconds."""

    thumos: dict[str, Any]  # input_dim, dim, length (of every video), max_seq_len, batch
    fineaction_overrides: list[str]  # on configs/fineaction.yaml
    input_dim: int
    steps: int  # train steps per case (the first is warm-up, untimed)
    longest_video: int
    val_videos: int
    search_overrides: list[str]  # on search_spaces/demo.yaml
    compiled_cases: tuple[str, ...]  # the train cases also run under torch.compile
    compile_backend: str
    attention: dict[str, int]  # batch, heads, length, head_dim, window


FULL = Sizes(
    thumos={"input_dim": 2048, "dim": 512, "length": 2304, "max_seq_len": 2304, "batch": 2},
    fineaction_overrides=[],
    input_dim=4352,
    steps=6,
    longest_video=LONGEST_VIDEO_STEPS,
    val_videos=FINEACTION_VAL_VIDEOS,
    search_overrides=["train.epochs=3", "train.warmup_epochs=0"],
    compiled_cases=("THUMOS-size", "FineAction-size"),
    compile_backend="inductor",
    attention={"batch": 2, "heads": 4, "length": 2304, "head_dim": 128, "window": 19},
)
TINY = Sizes(
    thumos={"input_dim": 64, "dim": 32, "length": 288, "max_seq_len": 576, "batch": 2},
    fineaction_overrides=[
        "model.embd_dim=32",
        "model.fpn_dim=32",
        "model.head_dim=32",
        "data.max_seq_len=576",
        "train.batch_size=2",
    ],
    input_dim=64,
    steps=2,
    longest_video=1024,
    val_videos=16,
    search_overrides=[
        "synthetic.videos=12",
        "train.epochs=2",
        "train.warmup_epochs=0",
        "train.batch_size=4",
        "model.embd_dim=16",
        "model.fpn_dim=16",
        "model.head_dim=16",
    ],
    # Inductor's C++ code generation for the whole model takes minutes on 2 cores: the CPU check
    # captures the graph (Dynamo + AOT autograd, the part that breaks on model code) for one shape.
    compiled_cases=("THUMOS-size",),
    compile_backend="aot_eager",
    attention={"batch": 2, "heads": 2, "length": 160, "head_dim": 16, "window": 9},
)


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def peak_memory_gib(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def forward_wrapper(device: torch.device, bf16: bool, backend: str | None) -> Callable[[torch.nn.Module], Callable]:
    """The model as train_step calls it: compiled or not; on CPU bf16 autocast around it (on CUDA
    the science's own autocast applies, from train.bf16)."""

    def wrap(model: torch.nn.Module) -> Callable:
        forward = torch.compile(model, backend=backend) if backend else model
        if device.type == "cuda" or not bf16:
            return forward

        def cpu_bf16(*args: Any) -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return forward(*args)

        return cpu_bf16

    return wrap


def train_cases(sizes: Sizes, device: torch.device, tolerance: float) -> list[dict[str, Any]]:
    """Both model sizes x fp32/bf16 x eager/compiled on identical batches and initial weights."""
    t = sizes.thumos
    thumos = load_config(
        REPO / "configs/fineaction.yaml",
        [
            *(f"model.{k}={t['dim']}" for k in ("embd_dim", "fpn_dim", "head_dim")),
            f"data.max_seq_len={t['max_seq_len']}",
        ],
    )
    fine = load_config(REPO / "configs/fineaction.yaml", sizes.fineaction_overrides)
    rng = np.random.default_rng(0)
    plans = {
        "THUMOS-size": (thumos, t["input_dim"], THUMOS_CLASSES, [[t["length"]] * t["batch"]] * sizes.steps),
        "FineAction-size": (
            fine,
            sizes.input_dim,
            106,
            [fineaction_lengths(rng, fine.train.batch_size, fine.data.max_seq_len) for _ in range(sizes.steps)],
        ),
    }
    rows = []
    for name, (base, input_dim, classes, length_sets) in plans.items():
        batch_rng = np.random.default_rng(1)
        multiple = inference_div_factor(base.model)
        batches = [make_batch(batch_rng, lengths, input_dim, multiple, classes) for lengths in length_sets]
        fp32_losses: dict[bool, list[float]] = {}
        for compiled in (False, True) if name in sizes.compiled_cases else (False,):
            for bf16 in (False, True):
                cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, bf16=bf16, device=device.type))
                backend = sizes.compile_backend if compiled else None
                reset_peak(device)
                started = time.perf_counter()
                seconds, losses = time_training(
                    cfg, device, batches, 1, input_dim, classes, forward_wrapper(device, bf16, backend)
                )
                row = {
                    "case": name,
                    "precision": "bf16" if bf16 else "fp32",
                    "compiled": backend,
                    "s_per_step": seconds,
                    "first_step_s": time.perf_counter() - started - seconds * (len(batches) - 1),
                    "peak_memory_gib": peak_memory_gib(device),
                    "losses": losses,
                }
                if bf16:
                    ref = fp32_losses[compiled]
                    worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(losses, ref, strict=True))
                    row.update(bf16_max_rel_diff=worst, ok=worst <= tolerance)
                else:
                    fp32_losses[compiled] = losses
                    row["ok"] = all(np.isfinite(losses))
                rows.append(row)
                progress(f"train {name} {row['precision']} {backend or 'eager'}: {seconds:.3f} s/step")
    return rows


class RandomFeatures:
    """A FeatureReader stand-in serving random (C, T) features of given lengths from one buffer,
    so a FineAction-sized validation set needs no files (the reader interface InferenceDataset uses:
    ``has``, ``probe`` -> VideoLayout on the native 16/16 grid, ``load``)."""

    grid = Grid(16.0, 16.0)
    dtype = np.dtype(np.float32)

    def __init__(self, lengths: dict[str, int], dim: int) -> None:
        self.lengths = lengths
        self.dim = dim
        self._buffer = np.random.default_rng(0).standard_normal((dim, max(lengths.values())), dtype=np.float32)

    def has(self, video_id: str) -> bool:
        return video_id in self.lengths

    def probe(self, video: TimedVideo) -> VideoLayout:
        n = self.lengths[video.video_id]
        return VideoLayout({"random": n}, {"random": self.grid}, n, False, n, self.grid)

    def load(
        self, video: TimedVideo, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        view = self._buffer[:, start : self.lengths[video.video_id] if stop is None else stop]
        if out is None:
            return view.copy()
        out[...] = view
        return out


def attention_cases(sizes: Sizes, device: torch.device, repeats: int) -> dict[str, Any]:
    """Forward + backward of the band attention with every backend, on the same inputs (the last
    sample padded to 3/4 of the length); each backend's output and gradients against ``banded``."""
    a = sizes.attention
    gen = torch.Generator().manual_seed(0)
    shape = (a["batch"], a["heads"], a["length"], a["head_dim"])
    inputs = [torch.randn(shape, generator=gen).to(device) for _ in range(3)]
    kv_mask = torch.ones(a["batch"], a["length"], dtype=torch.bool)
    kv_mask[-1, a["length"] * 3 // 4 :] = False
    kv_mask = kv_mask.to(device)
    valid_rows = kv_mask[:, None, :, None]  # padded queries' rows are masked by the model

    def run() -> list[torch.Tensor]:
        q, k, v = (x.detach().requires_grad_() for x in inputs)
        out = attention.band_attention(q, k, v, kv_mask, a["window"]) * valid_rows
        out.square().sum().backward()
        return [out.detach(), q.grad, k.grad, v.grad]

    # FlexAttention has no backward on the CPU (torch 2.13): there it is checked on CUDA only
    backends = [b for b in attention.BAND_BACKENDS if b != "auto" and (b != "flex" or device.type == "cuda")]
    rows, reference = [], None
    try:
        for backend in backends:
            attention.set_band_attention_backend(backend)
            result = run()  # warm-up (compiles flex on CUDA)
            times = []
            for _ in range(repeats):
                sync(device)
                start = time.perf_counter()
                run()
                sync(device)
                times.append(time.perf_counter() - start)
            reference = result if reference is None else reference
            pairs = zip(result, reference, strict=True)
            diff = max(float((x - r).abs().max() / r.abs().max().clamp_min(1e-12)) for x, r in pairs)
            rows.append({"backend": backend, "s_per_call": float(np.median(times)), "max_rel_diff": diff})
            rows[-1]["ok"] = diff <= 1e-3
            progress(f"attention {backend}: {rows[-1]['s_per_call'] * 1000:.1f} ms (diff {diff:.1e})")
    finally:
        attention.set_band_attention_backend("auto")
    return {
        **a,
        "backends": rows,
        "fastest": min(rows, key=lambda r: r["s_per_call"])["backend"],
        "auto": attention.band_attention_backend(device),
        "ok": all(r["ok"] for r in rows),
    }


def validation_case(sizes: Sizes, device: torch.device, bf16: bool) -> dict[str, Any]:
    """predict + detect over a FineAction-sized validation set (untrained model, random features)."""
    from localization.model import ActionFormer

    cfg = load_config(REPO / "configs/fineaction.yaml", [*sizes.fineaction_overrides, f"train.bf16={bf16}"])
    rng = np.random.default_rng(2)
    lengths = {f"v_{i:05d}": n for i, n in enumerate(fineaction_lengths(rng, sizes.val_videos, sizes.longest_video))}
    classes = [f"c{i}" for i in range(106)]
    videos = [
        VideoAnnotation(v, "validation", n * 16 / 30, 30.0, np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
        for v, n in lengths.items()
    ]
    dataset = InferenceDataset(
        cfg.data, SubsetAnnotations("validation", videos, classes, {}), RandomFeatures(lengths, sizes.input_dim)
    )
    model = ActionFormer(cfg.model, sizes.input_dim, len(classes), cfg.data.max_seq_len).to(device).eval()
    reset_peak(device)
    started = time.perf_counter()
    raw = predict(model, dataset, cfg, device)
    sync(device)
    inference_s = time.perf_counter() - started
    started = time.perf_counter()
    detections = detect(raw, dataset, cfg)
    return {
        "videos": len(videos),
        "feature_steps": sum(lengths.values()),
        "inference_s": inference_s,
        "postprocess_s": time.perf_counter() - started,
        "segments": sum(len(d.scores) for d in detections.values()),
        "peak_memory_gib": peak_memory_gib(device),
        "ok": len(detections) == len(videos),
    }


@contextlib.contextmanager
def local_ray(device: torch.device) -> Iterator[None]:
    """A local Ray for the searches: this machine's GPUs, or on CPU one GPU declared as a resource."""
    import ray

    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # trials last seconds
    gpus = torch.cuda.device_count() if device.type == "cuda" else 1
    ray.init(num_cpus=os.cpu_count() or 1, num_gpus=gpus, object_store_memory=256 * 1024**2, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def search_case(sizes: Sizes, gpu: float, out: Path) -> dict[str, Any]:
    """The demo search, 2 trials of ``gpu`` GPUs each, in ``out`` (data, Ray results, MLflow)."""
    from mlflow.tracking import MlflowClient

    from runner import search

    uri = f"sqlite:///{out / 'mlflow' / 'mlflow.db'}"
    data = out.parent / "synthetic"  # generated by the first search, read by both
    overrides = [
        *sizes.search_overrides,
        f"data.annotations={data / 'annotations_gt.json'}",
        *(f"data.streams.{name}.dir={data / 'features' / name}" for name in ("i3d", "slowfast")),
        f"resources.gpu={gpu}",
        "resources.cpu=1",
        "search.max_concurrent=null",
        "search.scheduler.type=fifo",
        f"tracking.uri={uri}",
        f"experiment=gpu-check-{gpu:g}",
    ]
    started = time.perf_counter()
    outcome = search.run(
        REPO / "search_spaces/demo.yaml",
        overrides,
        num_samples=2,
        storage_path=out / "ray_results",
        echo=lambda _: None,
    )
    wall = time.perf_counter() - started
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(f"gpu-check-{gpu:g}").experiment_id], "tags.`runner.role` = 'trial'"
    )
    peak = 0.0
    for run in runs:
        for key in client.get_run(run.info.run_id).data.metrics:
            if key in NODE_MEMORY_METRIC or (key.startswith("system/gpu_") and key.endswith("_memory_usage_megabytes")):
                peak = max(peak, max(m.value for m in client.get_metric_history(run.info.run_id, key)))
    devices = sorted(r.data.tags.get("runner.cuda_visible_devices", "") for r in runs)
    together = len(runs) == 2 and max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)
    ok = outcome.status == "finished" and len(runs) == 2 and (not gpu < 1 or (together and devices[0] == devices[1]))
    return {
        "gpu_per_trial": gpu,
        "status": outcome.status,
        "concurrency": outcome.concurrency,
        "wall_s": wall,
        "cuda_visible_devices": devices,
        "ran_together": together,
        "peak_memory_gib": peak / 1024,
        "ok": ok,
    }


def machine(device: torch.device) -> dict[str, Any]:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "device": str(device),
        "gpu": card,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def verdict(part: dict[str, Any]) -> str:
    return "ok" if part["ok"] else "FAIL"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"### GPU check: `{report['command']}`",
        "",
        f"{m['gpu'] or 'no GPU (CPU)'}, {m['cpus']} CPUs, torch {m['torch']}, {m['date']}. "
        f"Memory: {'CUDA peak allocated' if m['gpu'] else 'peak process RSS (train, inference), node RAM (searches)'}.",
        "",
        "| part | setting | time | peak memory | check |",
        "|---|---|---|---|---|",
    ]
    for r in report["train"]:
        check = f"bf16 vs fp32 loss {r['bf16_max_rel_diff']:.2%}" if "bf16_max_rel_diff" in r else "finite losses"
        compiled = f"torch.compile ({r['compiled']})" if r["compiled"] else "eager"
        lines.append(
            f"| train step {r['case']} | {r['precision']}, {compiled} | {r['s_per_step']:.3f} s/step "
            f"(first {r['first_step_s']:.1f} s) | {r['peak_memory_gib']:.2f} GiB | {check} {verdict(r)} |"
        )
    att = report["attention"]
    for r in att["backends"]:
        picked = ", fastest" * (r["backend"] == att["fastest"]) + ", auto's pick" * (r["backend"] == att["auto"])
        lines.append(
            f"| band attention, fwd + bwd | {r['backend']} (T {att['length']}, window {att['window']}{picked}) | "
            f"{r['s_per_call'] * 1000:.1f} ms | | vs banded {r['max_rel_diff']:.1e} {verdict(r)} |"
        )
    v = report["longest_video"]
    lines.append(
        f"| longest video | {v['steps']} steps | forward {v['forward_s']:.2f} s, post-processing "
        f"{v['postprocess_s'] * 1000:.0f} ms | {v['peak_memory_gib']:.2f} GiB | {v['segments']} segments |"
    )
    v = report["validation"]
    lines.append(
        f"| validation | {v['videos']} videos, {v['feature_steps']} steps | inference {v['inference_s']:.1f} s, "
        f"post-processing {v['postprocess_s']:.1f} s | {v['peak_memory_gib']:.2f} GiB | "
        f"{verdict(v)} |"
    )
    for s in report["searches"]:
        lines.append(
            f"| search, 2 trials | gpu {s['gpu_per_trial']:g} per trial: {s['concurrency']} at once on "
            f"CUDA_VISIBLE_DEVICES {s['cuda_visible_devices']} | {s['wall_s']:.1f} s | "
            f"{s['peak_memory_gib']:.2f} GiB | {s['status']}{', together' if s['ran_together'] else ''} {verdict(s)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the whole check in seconds (tests)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--bf16-tolerance", type=float, default=0.05, help="largest relative loss difference")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on CPU, torch's on CUDA)")
    args = parser.parse_args(argv)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    device = torch.device(args.device)
    sizes = TINY if args.tiny else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    bf16 = device.type == "cuda"  # inference as a trial evaluates: bf16 autocast on CUDA

    report: dict[str, Any] = {
        "command": " ".join(["python benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(device),
        "train": train_cases(sizes, device, args.bf16_tolerance),
    }
    report["attention"] = attention_cases(sizes, device, repeats=sizes.steps * 2)
    cfg: RunConfig = load_config(REPO / "configs/fineaction.yaml", [*sizes.fineaction_overrides, f"train.bf16={bf16}"])
    reset_peak(device)
    forward_s, post_s, kept = time_longest_video(cfg, device, sizes.input_dim, sizes.longest_video)
    report["longest_video"] = {
        "steps": sizes.longest_video,
        "forward_s": forward_s,
        "postprocess_s": post_s,
        "segments": kept,
        "peak_memory_gib": peak_memory_gib(device),
        "ok": kept > 0,
    }
    progress(f"longest video: forward {forward_s:.2f} s")
    report["validation"] = validation_case(sizes, device, bf16)
    progress(f"validation: inference {report['validation']['inference_s']:.1f} s")
    report["searches"] = []
    if not args.skip_search:
        with local_ray(device):
            for gpu in (1, 0.5):
                report["searches"].append(search_case(sizes, gpu, args.out / f"search-gpu-{gpu:g}"))
                progress(f"search gpu {gpu:g}: {report['searches'][-1]['wall_s']:.1f} s")
    parts = [*report["train"], report["attention"], report["longest_video"], report["validation"], *report["searches"]]
    report["ok"] = all(p["ok"] for p in parts)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
