"""Post-processing speed per video on a FineAction-sized case (no model, synthetic outputs).

Videos of 180..2304 feature steps (padded to a multiple of 32), 6 levels with strides 1..32,
106 classes, pre_nms_topk 5000 per level, max_seg_num 100. Two score regimes:

* dense: logits near the classifier prior (an early-training model): every position passes
  pre_nms_thresh, so every level hands 5000 candidates (up to ~30k per video) to NMS;
* sparse: logits mostly far below the threshold (a trained model).

Reports the median milliseconds per video of ``select_candidates`` and ``batched_nms``: wall
clock, and CPU time of this process (steadier on a shared machine; equal to wall clock with one
thread on an idle one).

``--whole-set`` instead re-scores a FineAction-sized validation set (4,174 videos, 106 classes,
24,000 ground-truth instances, ~1,460 raw candidates per video as in the sparse regime, top 100
kept) per post-processing setting, end to end (NMS, seconds, mAP), three ways: video by video
(``postprocess``, the implementation before the whole-subset one), all videos at once
(``SubsetScorer``: the first setting pays the setting-independent sort, the next reuse it), and
scoring the resulting detections alone (``evaluate_detections``), the yardstick. The next
setting's two figures are medians of ``--repeat`` alternated rounds. ``--commands`` times the
same comparison as commands, the issue's own yardstick: ``localization.evaluate --from-raw``
against ``localization.metrics`` on the submission it wrote (the set written to a temporary
folder first).

    python benchmarks/postprocess_speed.py [--videos 40] [--device cpu] [--threads 1] [--agnostic]
    taskset -c 0 python benchmarks/postprocess_speed.py --whole-set [--commands] [--videos 4174] [--repeat 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from localization.config.schema import TestConfig
from localization.inference.postprocess import Candidates, batched_nms, postprocess, select_candidates

STRIDES = [1, 2, 4, 8, 16, 32]
NUM_CLASSES = 106


def fake_outputs(length: int, regime: str, gen: torch.Generator, device: str):
    """Per-level (logits (T_l, K), offsets (T_l, 2), masks (T_l,)) and points (P, 4) of one video."""
    padded = -(-length // STRIDES[-1]) * STRIDES[-1]
    mean, spread = (-4.6, 1.0) if regime == "dense" else (-12.0, 2.0)
    logits, offsets, masks, points = [], [], [], []
    for stride in STRIDES:
        t_l = padded // stride
        logits.append(mean + spread * torch.randn(t_l, NUM_CLASSES, generator=gen))
        offsets.append(torch.exp(0.5 + 0.8 * torch.randn(t_l, 2, generator=gen)))
        masks.append(torch.arange(t_l) * stride < length)
        t = torch.arange(t_l, dtype=torch.float32) * stride
        lo, hi, st = torch.zeros_like(t), torch.full_like(t, 1e4), torch.full_like(t, stride)
        points.append(torch.stack([t, lo, hi, st], 1))  # (T_l, 4); the ranges are not used here
    move = [[x.to(device) for x in group] for group in (logits, offsets, masks)]
    return (*move, torch.cat(points).to(device))


def timed(fn):
    """(result, wall ms, CPU ms)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def whole_set_case(videos: int, seed: int) -> tuple:
    """(raw {video id: Candidates}, timing, ground truth, class names): candidates in grid units
    (stride 16, 16-frame clips, 30 fps) around ground-truth instances plus clutter."""
    from localization.inference.subset_postprocess import VideoTiming
    from localization.metrics import ground_truth_from_arrays

    rng = np.random.default_rng(seed)
    lengths = rng.integers(180, 2305, videos)  # feature steps
    gt_per_video = np.bincount(rng.choice(videos, 24_000 * videos // 4174), minlength=videos)
    raw, timing, gt = {}, [], {}
    for v, steps in enumerate(lengths):
        vid, duration = f"v_{v:08d}", (steps * 16 + 8) / 30.0
        n_gt = gt_per_video[v]
        gt_len = np.minimum(rng.lognormal(np.log(6.0), 1.0, n_gt), steps / 2)  # grid units
        gt_start = rng.uniform(0, steps - gt_len)
        gt_labels = rng.integers(0, NUM_CLASSES, n_gt)
        gt[vid] = (np.stack([gt_start, gt_start + gt_len], 1) * 16 / 30.0, gt_labels)
        n = int(1464 * steps / 1242)
        near = rng.integers(0, max(n_gt, 1), n // 2) if n_gt else np.zeros(0, np.int64)
        centre = np.r_[
            (gt_start + gt_len / 2)[near] + rng.normal(0, 1, len(near)), rng.uniform(0, steps, n - len(near))
        ]
        length = np.r_[gt_len[near] * rng.lognormal(0, 0.3, len(near)), rng.lognormal(np.log(8), 1, n - len(near))]
        labels = np.r_[gt_labels[near], rng.integers(0, NUM_CLASSES, n - len(near))]
        scores = np.r_[rng.beta(2, 5, len(near)), 0.001 + rng.beta(1, 30, n - len(near))]
        segments = np.stack([centre - length / 2, centre + length / 2], 1)
        raw[vid] = Candidates(segments.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64))
        timing.append(VideoTiming(vid, 30.0, float(duration), 16.0, 16.0))
    classes = [f"class_{c:03d}" for c in range(NUM_CLASSES)]
    return raw, timing, ground_truth_from_arrays(gt, classes, "validation"), classes


def whole_set(videos: int, seed: int, repeat: int) -> None:
    """Seconds per post-processing setting on the whole set (see the module docstring): the
    per-video baseline once per setting; after the first setting, re-scoring and scoring alone
    alternate ``repeat`` times and their medians are compared."""
    from localization.inference.evaluation import SubsetScorer
    from localization.inference.subset_postprocess import CandidateSet
    from localization.metrics import evaluate_detections, predictions_from_arrays

    raw, timing, gt, classes = whole_set_case(videos, seed)
    base = TestConfig()
    print(
        f"whole set: {len(timing)} videos, {sum(len(c) for c in raw.values())} raw candidates, "
        f"{len(gt.labels)} ground truth, {NUM_CLASSES} classes, torch_threads={torch.get_num_threads()}"
    )
    scorer = None
    for sigma in (0.5, 0.77):
        cfg = dataclasses.replace(base, nms_sigma=sigma)

        def per_video(cfg: TestConfig = cfg) -> dict:
            return {t.video_id: postprocess(raw[t.video_id], cfg, t.fps, t.duration, t.stride, t.clip) for t in timing}

        def score(detections: dict, cfg: TestConfig = cfg):
            return evaluate_detections(gt, predictions_from_arrays(detections, classes), cfg.tiou_thresholds)

        detections, *t_nms = timed(per_video)
        before, *t_score = timed(lambda d=detections: score(d))
        first = scorer is None
        if first:  # one measurement: only the first setting builds the set

            def build_and_score(cfg: TestConfig = cfg):
                built = SubsetScorer(CandidateSet.from_raw(raw, timing), gt, classes, base)
                return built, built.metrics(cfg)

            (scorer, after), *t_after = timed(build_and_score)
            t_alone = [t_score]
        else:
            t_after, t_alone = [], [t_score]
            for _ in range(repeat):  # alternated, so a change in the machine's speed hits both
                after, *t = timed(lambda s=scorer, c=cfg: s.metrics(c))
                t_after.append(t)
                t_alone.append(timed(lambda d=detections: score(d))[1:])
            t_after = [statistics.median(col) for col in zip(*t_after, strict=True)]
        assert after.average_mAP == before.average_mAP  # the same detections, the same score
        t_alone = [statistics.median(col) for col in zip(*t_alone, strict=True)]
        rows = {"video by video": [t_nms[i] + t_score[i] for i in (0, 1)], "all videos at once": t_after}
        rows["scoring alone"] = t_alone
        shown = "  ".join(f"{name} {wall / 1e3:6.2f} s ({cpu / 1e3:6.2f} s)" for name, (wall, cpu) in rows.items())
        print(
            f"sigma {sigma:.2f}, {'first setting (builds the set)' if first else 'next setting (set reused)'}, "
            f"mAP {after.average_mAP:.3f}, wall (CPU{'' if first else f', median of {repeat}'}): {shown}  "
            f"ratio to scoring alone, CPU: before {rows['video by video'][1] / t_alone[1]:.1f}x, "
            f"now {rows['all videos at once'][1] / t_alone[1]:.1f}x"
        )


def dense_case(videos: int, seed: int, topk: int = 5000) -> tuple:
    """(raw {video id: Candidates}, timing, ground truth, class names) as an early model leaves them
    on a FineAction-sized validation set: ~21k raw candidates per video.

    Per video and pyramid level (strides 1..32), logits near the classifier prior (-4, spread 1,
    a per-class bias, +1.5 inside the video's ground-truth instances for their class, what two
    epochs learn) go through ``select_candidates``'s steps: the top ``topk`` (point, class) pairs
    in descending probability, those above pre_nms_thresh (0.001, nearly all) kept, each a segment
    [t - left, t + right] with offsets exp(0.5 + 0.8 N) strides. Lengths are lognormal (spread
    0.866, FineAction validation's mean/median duration ratio), their median set so the set holds
    ~87 M candidates, the count a two-epoch model left on the real set. The arrays are flat, each
    video's candidates a view (as ``load_candidates`` gives them)."""
    from localization.inference.subset_postprocess import VideoTiming
    from localization.metrics import ground_truth_from_arrays

    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(262.0), 0.866, videos)), 2, 14_400).astype(np.int64)  # steps
    capacity = int(sum(np.minimum(topk, -(-lengths // s) * NUM_CLASSES) for s in STRIDES).sum())
    segments, scores = np.empty((capacity, 2), np.float32), np.empty(capacity, np.float32)
    labels = np.empty(capacity, np.int64)
    class_bias = rng.normal(0.0, 0.5, NUM_CLASSES).astype(np.float32) - np.float32(4.0)
    gt_per_video = np.bincount(rng.choice(videos, 24_236 * videos // 4174), minlength=videos)
    offsets, timing, gt = [0], [], {}
    for v, steps in enumerate(lengths):
        vid, n_gt = f"v_{v:08d}", gt_per_video[v]
        gt_len = np.minimum(rng.lognormal(np.log(6.0), 1.0, n_gt), steps / 2)  # grid units
        gt_start = rng.uniform(0, steps - gt_len)
        gt_labels = rng.integers(0, NUM_CLASSES, n_gt)
        gt[vid] = (np.stack([gt_start, gt_start + gt_len], 1) * 16 / 30.0, gt_labels)
        n = offsets[-1]
        for stride in STRIDES:
            logits = rng.standard_normal((-(-steps // stride), NUM_CLASSES), dtype=np.float32)
            logits += class_bias
            for a, b, label in zip(gt_start, gt_start + gt_len, gt_labels, strict=True):
                logits[int(np.ceil(a / stride)) : int(b // stride) + 1, label] += np.float32(1.5)
            flat = logits.ravel()
            k = min(topk, flat.size)
            top = np.argpartition(flat, flat.size - k)[flat.size - k :]
            top = top[np.argsort(-flat[top], kind="stable")]  # descending, as torch.topk
            point, label = np.divmod(top, NUM_CLASSES)
            reach = np.exp(np.float32(0.5) + np.float32(0.8) * rng.standard_normal((k, 2), dtype=np.float32))
            prob = np.float32(1) / (np.float32(1) + np.exp(-flat[top]))
            keep = (prob > np.float32(0.001)) & ((reach[:, 0] + reach[:, 1]) * stride > np.float32(0.05))
            m, t = int(keep.sum()), (point[keep] * stride).astype(np.float32)
            segments[n : n + m, 0] = t - reach[keep, 0] * np.float32(stride)
            segments[n : n + m, 1] = t + reach[keep, 1] * np.float32(stride)
            scores[n : n + m], labels[n : n + m] = prob[keep], label[keep]
            n += m
        offsets.append(n)
        timing.append(VideoTiming(vid, 30.0, float((steps * 16 + 8) / 30.0), 16.0, 16.0))
    raw = {
        video.video_id: Candidates(segments[a:b], scores[a:b], labels[a:b])
        for video, a, b in zip(timing, offsets[:-1], offsets[1:], strict=True)
    }
    classes = [f"class_{c:03d}" for c in range(NUM_CLASSES)]
    return raw, timing, ground_truth_from_arrays(gt, classes, "validation"), classes


def _memory() -> tuple[float, float]:
    """(resident, peak resident since the last reset) GB of this process, from /proc."""
    lines = Path("/proc/self/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    return tuple(int(status[key].split()[0]) / 2**20 for key in ("VmRSS", "VmHWM"))


def _reset_peak() -> None:
    """Start a new peak-resident count (Linux: ``5`` into clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def dense(videos: int, seed: int, repeat: int) -> None:
    """The dense regime (``dense_case``): the first setting (the set built, sorted and grouped,
    then scored), its peak resident memory and system time; then ``repeat`` alternated rounds of
    a next setting (Soft-NMS sigma varied, as the searched space does) and of scoring its
    detections alone (``evaluate_detections``), medians compared."""
    import hashlib
    import resource

    from localization.inference.evaluation import SubsetScorer
    from localization.inference.subset_postprocess import CandidateSet
    from localization.metrics import evaluate_detections, predictions_from_arrays

    started = time.perf_counter()
    raw, timing, gt, classes = dense_case(videos, seed)
    total = sum(len(c) for c in raw.values())
    resident, _ = _memory()
    print(
        f"dense set: {len(timing)} videos, {total} raw candidates ({total / len(timing):.0f} per video), "
        f"{len(gt.labels)} ground truth, {NUM_CLASSES} classes, made in {time.perf_counter() - started:.1f} s, "
        f"resident {resident:.2f} GB"
    )
    base = TestConfig()

    def system() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_stime

    _reset_peak()
    sys_before = system()

    def build_and_score():
        built = SubsetScorer(CandidateSet.from_raw(raw, timing), gt, classes, base)
        return built, built.metrics(base)

    (scorer, first), *t_first = timed(build_and_score)
    sys_first = system() - sys_before
    resident, peak = _memory()
    print(
        f"first setting (builds the set): wall {t_first[0] / 1e3:6.2f} s, CPU {t_first[1] / 1e3:6.2f} s, "
        f"system {sys_first:5.2f} s, peak resident {peak:.2f} GB, resident after {resident:.2f} GB, "
        f"mAP {first.average_mAP:.4f}"
    )
    t_next, t_alone, sys_next = [], [], 0.0
    for sigma in np.linspace(0.3, 0.95, repeat):  # alternated, so a change in the machine's speed hits both
        cfg = dataclasses.replace(base, nms_sigma=float(sigma))
        sys_before = system()
        after, *t = timed(lambda c=cfg: scorer.metrics(c))
        sys_next += system() - sys_before
        t_next.append(t)
        detections = scorer.candidates.detect(cfg).per_video()
        alone, *t = timed(lambda d=detections, c=cfg: evaluate_detections(gt, predictions_from_arrays(d, classes)))
        assert alone.average_mAP == after.average_mAP
        t_alone.append(t)
    digest = hashlib.sha256()  # the detections of the first and the last setting, to compare across versions
    for setting in (base, cfg):
        found = scorer.candidates.detect(setting)
        for array in (found.offsets, found.segments, found.scores, found.labels.astype(np.int64)):
            digest.update(np.ascontiguousarray(array).tobytes())
    (next_wall, next_cpu), (alone_wall, alone_cpu) = (
        [statistics.median(col) / 1e3 for col in zip(*rows, strict=True)] for rows in (t_next, t_alone)
    )
    print(
        f"next setting (set reused), medians of {repeat}: wall {next_wall:6.2f} s, CPU {next_cpu:6.2f} s; "
        f"system {sys_next / repeat:5.2f} s; scoring alone: wall {alone_wall:6.2f} s, CPU {alone_cpu:6.2f} s; "
        f"ratio, CPU: {next_cpu / alone_cpu:.1f}x"
    )
    print(f"detections sha256 {digest.hexdigest()[:16]}")


def command_line(videos: int, seed: int, repeat: int) -> None:
    """The issue's yardstick as commands: ``localization.evaluate --from-raw`` (load the raw
    candidates and the subset, post-process, score, write the submission) against
    ``localization.metrics`` on that submission (load it, score), on the whole set written to a
    temporary folder (the annotation file, one-channel features giving each video its length,
    the raw candidates). Process start and imports count in both; medians of ``repeat``
    alternated rounds."""
    import json
    import resource
    import subprocess
    import sys
    import tempfile

    import yaml

    from localization.inference.postprocess import save_candidates

    raw, timing, gt, classes = whole_set_case(videos, seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "features").mkdir()
        database, class_id = {}, {name: c for c, name in enumerate(classes)}
        gt_index = {video_id: v for v, video_id in enumerate(gt.video_ids)}
        for video in timing:
            steps = round((video.duration * video.fps - 8) / 16)  # whole_set_case's duration
            np.save(root / "features" / f"{video.video_id}.npy", np.zeros((steps, 1), np.float32))
            rows = gt.video == gt_index[video.video_id]
            names = [gt.class_names[label] for label in gt.labels[rows]]
            database[video.video_id] = {
                "subset": "validation",
                "duration": video.duration,
                "fps": video.fps,
                "annotations": [
                    {"segment": segment, "label": name, "label_id": class_id[name]}
                    for segment, name in zip(gt.segments[rows].tolist(), names, strict=True)
                ],
            }
        annotations = root / "annotations.json"
        annotations.write_text(json.dumps({"database": database, "taxonomy": classes}))
        stream = {"dir": str(root / "features"), "dim": 1, "feat_stride": 16, "num_frames": 16, "layout": "tc"}
        data = {"annotations": str(annotations), "train_subset": "validation", "val_subset": "validation"}
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump({"data": {**data, "streams": {"i3d": stream}, "features": ["i3d"]}}))
        save_candidates(root / "raw.npz", raw)
        commands = {
            "re-scoring (localization.evaluate --from-raw)": [
                "-m", "localization.evaluate", str(config), "--from-raw", str(root / "raw.npz"),
                "--set", "test.nms_sigma=0.77", "--out", str(root / "pred.json"), "--metrics", str(root / "m.json"),
            ],
            "scoring alone (localization.metrics)": [
                "-m", "localization.metrics", str(annotations), str(root / "pred.json"), "--json",
            ],
        }  # fmt: skip
        print(f"commands on {len(timing)} videos, {sum(len(c) for c in raw.values())} raw candidates:")
        times = {name: [] for name in commands}
        for _ in range(repeat):  # alternated, so a change in the machine's speed hits both
            for name, argv in commands.items():
                before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
                after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - wall
                times[name].append((wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime))
        for name, rounds in times.items():
            wall, cpu = (statistics.median(col) for col in zip(*rounds, strict=True))
            print(f"  {name}: wall {wall:6.2f} s, CPU {cpu:6.2f} s (medians of {repeat})")
        scored = json.loads(done.stdout)["average_mAP"]
        assert scored == json.loads((root / "m.json").read_text())["average_mAP"]  # one score, two paths
        rescoring, alone = (statistics.median(cpu for _, cpu in rounds) for rounds in times.values())
        ratio = rescoring / alone
        print(f"  mAP {scored:.3f} both; re-scoring vs scoring alone, CPU: {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, help="videos (default 40; --whole-set: 4174)")
    parser.add_argument("--whole-set", action="store_true", help="re-score a FineAction-sized set per setting")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--agnostic", action="store_true", help="class-agnostic Soft-NMS + voting 0.75")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=5, help="--whole-set: rounds of the next setting, or of the commands"
    )
    parser.add_argument("--commands", action="store_true", help="--whole-set: time the two commands instead")
    parser.add_argument(
        "--dense", action="store_true", help="re-score an early model's dense set (default 4171 videos)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dense:
        dense(args.videos or 4171, args.seed, args.repeat)
        return
    if args.whole_set:
        if args.commands:
            command_line(args.videos or 4174, args.seed, args.repeat)
        else:
            whole_set(args.videos or 4174, args.seed, args.repeat)
        return
    args.videos = args.videos or 40
    cfg = dataclasses.replace(TestConfig(), multiclass_nms=not args.agnostic)
    gen = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(180, 2305, (args.videos,), generator=gen).tolist()
    print(
        f"device={args.device} torch_threads={torch.get_num_threads()} videos={args.videos} "
        f"classes={NUM_CLASSES} nms={cfg.nms_method} multiclass={cfg.multiclass_nms} "
        f"topk={cfg.pre_nms_topk} max_seg_num={cfg.max_seg_num}"
    )
    for regime in ("dense", "sparse"):
        rows, counts = [], []  # per video: select wall, select cpu, nms wall, nms cpu
        for i, length in enumerate(lengths):
            outputs = fake_outputs(length, regime, gen, args.device)
            cands, *t_select = timed(lambda o=outputs: select_candidates(*o, cfg))
            _, *t_nms = timed(lambda c=cands: batched_nms(c, cfg))
            if i:  # the first video warms up allocators / kernels
                rows.append([*t_select, *t_nms, t_select[0] + t_nms[0], t_select[1] + t_nms[1]])
                counts.append(len(cands))
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(
            f"{regime:6s} candidates/video median {statistics.median(counts):6.0f} | median ms/video "
            f"wall (cpu): select {med[0]:6.2f} ({med[1]:6.2f})  nms {med[2]:6.2f} ({med[3]:6.2f})  "
            f"total {med[4]:6.2f} ({med[5]:6.2f})"
        )


if __name__ == "__main__":
    main()
