"""Time ``evaluate_detections`` on a FineAction-validation-sized case, single-threaded.

4,174 videos, 106 classes, 24,000 ground-truth instances and 100 predictions per video
(417,400), seeded. Predictions imitate a detector after Soft-NMS: several jittered copies of each
ground truth (some with a wrong class) plus random segments, so that the greedy matching has real
contention. Prints the median of 3 runs of ``evaluate_detections`` (and, separately, the one-off
cost of building the inputs from per-video arrays, which the trainer also pays).
``--single-class`` gives every video one class for all its ground truth and predictions: each
prediction then pairs with every ground truth of its video, the most pairs this size allows
(100 x 24,000).

    python benchmarks/metrics_speed.py [--seed 0] [--repeats 3] [--single-class]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from localization.metrics import (  # noqa: E402
    evaluate_detections,
    ground_truth_from_arrays,
    predictions_from_arrays,
)

NUM_VIDEOS, NUM_CLASSES, NUM_GT, PRED_PER_VIDEO = 4174, 106, 24_000, 100


def make_case(seed: int, single_class: bool = False) -> tuple[dict, dict, list[str]]:
    """Per-video arrays: gt {vid: (segments, labels)}, predictions {vid: (segments, scores, labels)}."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{c:03d}" for c in range(NUM_CLASSES)]
    durations = rng.lognormal(np.log(100.0), 0.8, NUM_VIDEOS).clip(2.0, 3000.0)  # (V,) seconds
    gt_per_video = np.bincount(rng.choice(NUM_VIDEOS, NUM_GT), minlength=NUM_VIDEOS)  # (V,) some 0
    class_weights = rng.pareto(1.5, NUM_CLASSES) + 0.1  # long-tailed classes
    class_weights /= class_weights.sum()
    gt, preds = {}, {}
    for v in range(NUM_VIDEOS):
        dur, n = durations[v], gt_per_video[v]
        lengths = np.minimum(rng.lognormal(np.log(1.5), 1.2, n), 0.5 * dur)  # (n,) median ~1.5 s
        starts = rng.uniform(0, dur - lengths)
        gt_seg = np.stack([starts, starts + lengths], axis=1)  # (n, 2)
        gt_lab = rng.choice(NUM_CLASSES, n, p=class_weights)  # (n,)
        n_near = min(PRED_PER_VIDEO, 8 * n)  # jittered copies of ground truth (none when n = 0)
        src = rng.integers(0, max(n, 1), n_near)
        jitter = rng.normal(0.0, 0.15, (n_near, 2)) * lengths[src, None]
        near_seg = gt_seg[src] + jitter
        wrong = rng.random(n_near) >= 0.7
        near_lab = np.where(wrong, rng.integers(0, NUM_CLASSES, n_near), gt_lab[src])
        n_rand = PRED_PER_VIDEO - n_near
        rand_len = rng.lognormal(np.log(2.0), 1.0, n_rand)
        rand_start = rng.uniform(0, dur, n_rand)
        rand_seg = np.stack([rand_start, rand_start + rand_len], axis=1)
        seg = np.concatenate([near_seg, rand_seg]).clip(0, dur)  # (100, 2)
        seg[:, 1] = np.maximum(seg[:, 1], seg[:, 0] + 0.01)
        scores = np.concatenate([rng.beta(2, 2, n_near), rng.beta(1, 4, n_rand)]).round(4)  # some ties
        labels = np.concatenate([near_lab, rng.integers(0, NUM_CLASSES, n_rand)])
        if single_class:
            gt_lab[:] = labels[:] = gt_lab[0] if n else 0
        vid = f"v_{v:08d}"
        gt[vid] = (gt_seg, gt_lab)
        preds[vid] = (seg, scores, labels)
    return gt, preds, classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-class", action="store_true", help="worst case for the number of pairs")
    args = parser.parse_args()

    gt_arrays, pred_arrays, classes = make_case(args.seed, args.single_class)
    t0 = time.perf_counter()
    gt = ground_truth_from_arrays(gt_arrays, classes, subset="validation")
    predictions = predictions_from_arrays(pred_arrays, classes)
    build_s = time.perf_counter() - t0

    times, cpu_times, metrics = [], [], None
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = evaluate_detections(gt, predictions)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)  # less sensitive to other load on the machine
    assert metrics is not None
    print(
        f"videos {len(gt.video_ids)}, classes {len(gt.class_names)}, ground truth {len(gt.labels)}, "
        f"predictions {len(predictions.labels)}, single class per video: {args.single_class}"
    )
    print(f"average mAP {metrics.average_mAP:.2f}  mAP@0.50 {metrics.mAP[0]:.2f}  mAP@0.95 {metrics.mAP[-1]:.2f}")
    print(f"build inputs from arrays: {build_s:.3f} s")
    print(
        f"evaluate_detections (10 tIoU): median {statistics.median(times):.3f} s over {args.repeats} "
        f"runs {[round(t, 3) for t in times]}; CPU time median {statistics.median(cpu_times):.3f} s"
    )


if __name__ == "__main__":
    main()
