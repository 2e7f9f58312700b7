"""Training-loader throughput per core and memory per trial on FineAction-shaped features.

    python benchmarks/data_loading.py [--videos 240] [--dir DIR] [--rounds 5] [--json]

Writes ``--videos`` videos of random I3D-like [T, 2048] and SlowFast-like [T-1, 2304] float32
features, one ``.npy`` per video under ``DIR/features/i3d/`` and ``DIR/features/slowfast/`` (T
log-normal, median ~175 steps, a long tail up to FineAction's 14,208; about 17 KB per step), plus an
annotation file; files already there for the same ``--videos`` are reused, so runs compare on the
same files. Without ``--dir`` a temporary folder is used and removed. Then it packs the feature
store (float16) and, in one process pinned to one core with one torch thread, interleaves
``--rounds`` rounds of: plain ``np.load`` of both files of every video plus their concatenation;
one epoch of the training loader reading the files (``data.store: false``, float32); one epoch
reading the store (``data.store: true``, float16). The first round warms caches and is left out of
the steady-state figure (the median of the others). Last, 1, 2 and 4 trial processes at once
each run one epoch from the same store and stay alive while their PSS is read from
``/proc/<pid>/smaps_rollup`` (shared pages count once over all processes; ``store_pss_mb`` is the
part of it that maps the store, from ``/proc/<pid>/smaps``).

All files are in the page cache (just written or read): the figures are for a warm disk. Prints
one JSON object with ``--json`` (``loader.videos_per_s`` is the store loader's steady state), else
a short table; the 1-minute load average is recorded before and after (timings on a busy machine
mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STREAMS = {"i3d": (2048, 16), "slowfast": (2304, 32)}  # dim, frames per clip
FPS = 30.0
MAX_STEPS = 14208  # FineAction's longest video at stride 16


def write_dataset(root: Path, videos: int, seed: int = 0) -> dict[str, Any]:
    """Random features + a FineAction-style annotation file, unless the same set is there already."""
    facts_path = root / "facts.json"
    if facts_path.is_file() and json.loads(facts_path.read_text())["videos"] == videos:
        return json.loads(facts_path.read_text())
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(175), 1.0, size=videos)), 16, MAX_STEPS).astype(int)
    widest = max(dim for dim, _ in STREAMS.values())
    block = rng.standard_normal((int(lengths.max()) + 1, widest), dtype=np.float32)  # (T_max, C)
    for name in STREAMS:
        shutil.rmtree(root / "features" / name, ignore_errors=True)
        (root / "features" / name).mkdir(parents=True)
    database = {}
    for i, steps in enumerate(lengths.tolist()):
        video_id = f"v_{i:08d}"
        offset = int(rng.integers(0, 64))  # different content per video without generating it anew
        for name, (dim, frames) in STREAMS.items():
            rows = steps - (frames // 16 - 1)  # a 32-frame stream has one step fewer
            np.save(root / "features" / name / f"{video_id}.npy", np.roll(block[:rows, :dim], offset, axis=0))
        duration = (steps * 16 + 16) / FPS
        starts = np.sort(rng.uniform(0, duration * 0.8, size=3))
        database[video_id] = {
            "subset": "training",
            "duration": duration,
            "fps": FPS,
            "annotations": [
                {"segment": [float(s), float(min(s + rng.uniform(0.5, 15), duration))], "label": f"c{k}", "label_id": k}
                for k, s in enumerate(starts)
            ],
        }
    (root / "annotations.json").write_text(json.dumps({"database": database}))
    facts = {
        "videos": videos,
        "median_steps": float(np.median(lengths)),
        "max_steps": int(lengths.max()),
        "disk_bytes": sum(f.stat().st_size for f in (root / "features").rglob("*.npy")),
    }
    facts_path.write_text(json.dumps(facts))
    return facts


def data_config(root: Path, store: bool) -> Any:
    from localization.config.schema import DataConfig, StreamConfig

    streams = {
        name: StreamConfig(dir=str(root / "features" / name), dim=dim, num_frames=frames)
        for name, (dim, frames) in STREAMS.items()
    }
    return DataConfig(
        annotations=str(root / "annotations.json"),
        streams=streams,
        features=list(STREAMS),
        max_seq_len=2304,
        cache_features=False,
        store=store,
    )


def training_loader(root: Path, store: bool, batch_size: int) -> tuple[Any, Any]:
    """The training dataset and loader a trial builds (0 workers: this process is the one core)."""
    from localization.data.annotations import load_subset
    from localization.data.dataset import TrainingDataset, build_loader

    cfg = data_config(root, store)
    dataset = TrainingDataset(cfg, load_subset(cfg, "training"), seed=0)
    loader = build_loader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=0, seed=0, pad_multiple=32, drop_last=False
    )
    return dataset, loader


def loader_epoch(dataset: Any, loader: Any, epoch: int) -> tuple[float, float]:
    """(videos/s, batch feature bytes per video) of one epoch."""
    dataset.set_epoch(epoch)
    moved = 0
    started = time.perf_counter()
    for batch in loader:
        moved += batch["feats"].nbytes
    return len(dataset) / (time.perf_counter() - started), moved / len(dataset)


def np_load_epoch(root: Path, video_ids: list[str]) -> tuple[float, float]:
    """(videos/s, bytes read per video) of plain np.load of both streams + concatenation on channels."""
    read = 0
    started = time.perf_counter()
    for video_id in video_ids:
        a, b = (np.load(root / "features" / name / f"{video_id}.npy") for name in STREAMS)
        steps = min(len(a), len(b))
        np.concatenate([a[:steps], b[:steps]], axis=1)
        read += a.nbytes + b.nbytes
    return len(video_ids) / (time.perf_counter() - started), read / len(video_ids)


def one_core() -> int:
    """Pin this process to one CPU (the last one it may use) and torch to one thread."""
    import torch

    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    return cpu


def run_throughput(root: Path, rounds: int, batch_size: int) -> dict[str, Any]:
    """Interleaved rounds of np.load, the per-file loader and the store loader (in this process)."""
    cpu = one_core()
    files_set, files_loader = training_loader(root, store=False, batch_size=batch_size)
    store_set, store_loader = training_loader(root, store=True, batch_size=batch_size)
    ids = [video.video_id for video in files_set.videos]
    results: dict[str, dict[str, Any]] = {"np_load": {}, "loader_files": {}, "loader": {}}
    rates: dict[str, list[float]] = {name: [] for name in results}
    for epoch in range(rounds):
        for name, measure in (
            ("np_load", lambda: np_load_epoch(root, ids)),
            ("loader_files", lambda e=epoch: loader_epoch(files_set, files_loader, e)),
            ("loader", lambda e=epoch: loader_epoch(store_set, store_loader, e)),
        ):
            rate, per_video = measure()
            rates[name].append(rate)
            results[name]["bytes_per_video"] = per_video
    for name, values in rates.items():
        steady = values[1:] or values
        results[name].update(videos_per_s=statistics.median(steady), rounds_videos_per_s=values)
    results["loader"]["source"] = f"store, {store_set.reader.dtype}"
    results["loader_files"]["source"] = f"per-file .npy, {files_set.reader.dtype}"
    results["np_load"]["source"] = "np.load of both files + np.concatenate, float32"
    results["cpu"] = cpu
    return results


def pss(pid: int, store_root: Path) -> dict[str, float]:
    """PSS of a process (MB): total, anonymous, file-backed, and the part mapping the feature store."""
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        rollup[key] = int(value.split()[0]) / 1024
    store_kb, in_store = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header line: address perms offset dev inode [path]
            in_store = len(fields) >= 6 and fields[5].startswith(str(store_root))
        elif fields[0] == "Pss:" and in_store:
            store_kb += int(fields[1])
    return {
        "pss_mb": rollup["Pss"],
        "pss_anon_mb": rollup.get("Pss_Anon", 0.0),
        "pss_file_mb": rollup.get("Pss_File", 0.0),
        "store_pss_mb": store_kb / 1024,
    }


def run_memory(root: Path, trials: int, batch_size: int, store_root: Path) -> dict[str, Any]:
    """``trials`` processes each read one epoch from the store; their PSS is read while all are alive."""
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--trial", "--dir", str(root), "--batch-size", str(batch_size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(trials)
    ]
    try:
        for child in children:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"trial process {child.pid} failed")
        per_process = [pss(child.pid, store_root) for child in children]
    finally:
        for child in children:
            child.communicate("")  # closing stdin lets it exit
    total = {key: sum(p[key] for p in per_process) for key in per_process[0]}
    return {"processes": per_process, "sum": total}


def trial_process(root: Path, batch_size: int) -> None:
    """A trial's reading: one epoch from the store, then wait (alive, mapped) until stdin closes."""
    one_core()
    dataset, loader = training_loader(root, store=True, batch_size=batch_size)
    loader_epoch(dataset, loader, 0)
    print("ready", flush=True)
    sys.stdin.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the first warms up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dir", type=Path, help="write the files here and keep them (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--throughput", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        trial_process(args.dir, args.batch_size)
        return
    if args.throughput:
        print(json.dumps(run_throughput(args.dir, args.rounds, args.batch_size)))
        return
    root = (args.dir or Path(tempfile.mkdtemp(prefix="data_loading_"))).resolve()
    try:
        report = measure(root, args)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


def measure(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from localization.data.feature_store import pack

    report: dict[str, Any] = {"machine": machine(), "load_avg_before": os.getloadavg()[0]}
    started = time.perf_counter()
    report["data"] = {**write_dataset(root, args.videos), "dir": str(root), "ready_s": time.perf_counter() - started}
    stores = pack(data_config(root, store=True))
    report["store"] = {
        "bytes": sum(s.nbytes for s in stores),
        "dtype": str(stores[0].dtype),
        "built_s": sum(s.built_s or 0.0 for s in stores),
        "paths": [str(s.path) for s in stores],
    }
    command = [sys.executable, __file__, "--throughput", "--dir", str(root), "--rounds", str(args.rounds)]
    out = subprocess.run([*command, "--batch-size", str(args.batch_size)], check=True, capture_output=True, text=True)
    report.update(json.loads(out.stdout.strip().splitlines()[-1]))
    store_root = stores[0].path.parent
    report["memory"] = {str(k): run_memory(root, k, args.batch_size, store_root) for k in (1, 2, 4)}
    report["load_avg_after"] = os.getloadavg()[0]
    return report


def machine() -> dict[str, Any]:
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def print_table(r: dict[str, Any]) -> None:
    d = r["data"]
    print(
        f"# {d['videos']} videos, median {d['median_steps']:g} steps, max {d['max_steps']}, "
        f"{d['disk_bytes'] / 1e9:.2f} GB of .npy; store {r['store']['bytes'] / 1e9:.2f} GB {r['store']['dtype']}; "
        f"one core (cpu {r['cpu']}); load avg {r['load_avg_before']:.1f} -> {r['load_avg_after']:.1f}"
    )
    print("| reader | videos/s (steady) | per round | bytes/video |\n|---|---|---|---|")
    for name in ("np_load", "loader_files", "loader"):
        x = r[name]
        rounds = ", ".join(f"{v:.0f}" for v in x["rounds_videos_per_s"])
        print(f"| {x['source']} | {x['videos_per_s']:.0f} | {rounds} | {x['bytes_per_video'] / 1e6:.2f} MB |")
    print("| trials | PSS per process (MB) | sum PSS (MB) | sum store PSS (MB) |\n|---|---|---|---|")
    for k, m in r["memory"].items():
        each = ", ".join(f"{p['pss_mb']:.0f}" for p in m["processes"])
        print(f"| {k} | {each} | {m['sum']['pss_mb']:.0f} | {m['sum']['store_pss_mb']:.0f} |")


if __name__ == "__main__":
    main()
