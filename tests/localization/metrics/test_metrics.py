"""Detection metrics: hand-computed cases, the fast evaluator against a literal transcription of the
official ActivityNet / ActionFormer loops, loaders and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from localization.api import exit_status
from localization.errors import ConfigError, DataError
from localization.metrics import (
    DEFAULT_TIOU_THRESHOLDS,
    evaluate_detections,
    format_table,
    ground_truth_from_arrays,
    load_ground_truth,
    load_predictions,
    predictions_from_arrays,
)
from localization.metrics.__main__ import main as cli_main

# --------------------------------------------------------------------------------------------
# Reference: the official loops (eval_detection.py / ActionFormer metrics.py), transcribed
# literally. Only the two sorts differ: they are stable with the documented tie order, because
# the official numpy argsort is not.
# --------------------------------------------------------------------------------------------


def ref_segment_iou(target_segment, candidate_segments):
    tt1 = np.maximum(target_segment[0], candidate_segments[:, 0])
    tt2 = np.minimum(target_segment[1], candidate_segments[:, 1])
    segments_intersection = (tt2 - tt1).clip(0)
    segments_union = (
        (candidate_segments[:, 1] - candidate_segments[:, 0])
        + (target_segment[1] - target_segment[0])
        - segments_intersection
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return segments_intersection.astype(float) / segments_union


def ref_interpolated_prec_rec(prec, rec):
    mprec = np.hstack([[0], prec, [0]])
    mrec = np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
    return np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])


def ref_score_order(scores):
    return np.argsort(-np.asarray(scores, dtype=float), kind="stable")  # ties: input order


def ref_tiou_order(tiou_arr):  # descending, NaN first (official argsort()[::-1]), ties: GT order
    return sorted(range(len(tiou_arr)), key=lambda j: (-np.inf if np.isnan(tiou_arr[j]) else -tiou_arr[j], j))


def ref_compute_ap(gt, pred, tiou_thresholds):
    """gt: list of (video, s, e); pred: list of (video, s, e, score). Returns (ap (T,), tp count (T,))."""
    ap = np.zeros(len(tiou_thresholds))
    if not pred:
        return ap, np.zeros(len(tiou_thresholds))
    npos = float(len(gt))
    lock_gt = np.ones((len(tiou_thresholds), len(gt))) * -1
    sort_idx = ref_score_order([p[3] for p in pred])
    prediction = [pred[i] for i in sort_idx]
    tp = np.zeros((len(tiou_thresholds), len(prediction)))
    fp = np.zeros((len(tiou_thresholds), len(prediction)))
    ground_truth_gbvn = {}
    for index, g in enumerate(gt):
        ground_truth_gbvn.setdefault(g[0], []).append((index, g[1], g[2]))
    for idx, this_pred in enumerate(prediction):
        if this_pred[0] not in ground_truth_gbvn:
            fp[:, idx] = 1
            continue
        this_gt = ground_truth_gbvn[this_pred[0]]
        tiou_arr = ref_segment_iou(np.array(this_pred[1:3]), np.array([g[1:] for g in this_gt]))
        tiou_sorted_idx = ref_tiou_order(tiou_arr)
        for tidx, tiou_thr in enumerate(tiou_thresholds):
            for jdx in tiou_sorted_idx:
                if tiou_arr[jdx] < tiou_thr:
                    fp[tidx, idx] = 1
                    break
                if lock_gt[tidx, this_gt[jdx][0]] >= 0:
                    continue
                tp[tidx, idx] = 1
                lock_gt[tidx, this_gt[jdx][0]] = idx
                break
            if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
                fp[tidx, idx] = 1
    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(fp, axis=1).astype(float)
    recall_cumsum = tp_cumsum / npos
    precision_cumsum = tp_cumsum / (tp_cumsum + fp_cumsum)
    for tidx in range(len(tiou_thresholds)):
        ap[tidx] = ref_interpolated_prec_rec(precision_cumsum[tidx, :], recall_cumsum[tidx, :])
    return ap, tp.sum(axis=1)


def ref_topkx_recall(gt, pred, tiou_thresholds, top_k):
    """ActionFormer compute_topkx_recall_detection, same tuple layout as ref_compute_ap."""
    tp = np.zeros((len(tiou_thresholds), len(top_k)))
    if not pred:
        return tp
    n_gts = 0
    gt_by_video, pred_by_video = {}, {}
    for g in gt:
        gt_by_video.setdefault(g[0], []).append(g)
    for p in pred:
        pred_by_video.setdefault(p[0], []).append(p)
    for videoid, this_gt in gt_by_video.items():
        n_gts += len(this_gt)
        if videoid not in pred_by_video:
            continue
        this_pred = pred_by_video[videoid]
        score_sort_idx = ref_score_order([p[3] for p in this_pred])
        top_kx_idx = score_sort_idx[: max(top_k) * len(this_gt)]
        gt_segs = np.array([g[1:3] for g in this_gt])
        tiou_arr = np.stack([ref_segment_iou(np.array(this_pred[i][1:3]), gt_segs) for i in top_kx_idx])
        for tidx, tiou_thr in enumerate(tiou_thresholds):
            for kidx, k in enumerate(top_k):
                tiou = tiou_arr[: k * len(this_gt)]
                tp[tidx, kidx] += ((tiou >= tiou_thr).sum(axis=0) > 0).sum()
    return tp / n_gts


def reference_evaluate(gt_rows, pred_rows, thresholds, top_k=(1, 5)):
    """gt_rows: (video, s, e, label); pred_rows: (video, s, e, label, score). Per GT class: ap, recall,
    top-kx recall. Predictions of classes without GT are dropped (the one intended deviation)."""
    out = {}
    for c in dict.fromkeys(r[3] for r in gt_rows):
        gt = [(r[0], r[1], r[2]) for r in gt_rows if r[3] == c]
        pred = [(r[0], r[1], r[2], r[4]) for r in pred_rows if r[3] == c]
        ap, tp = ref_compute_ap(gt, pred, thresholds)
        out[c] = (ap, tp / len(gt), ref_topkx_recall(gt, pred, thresholds, top_k))
    return out


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def make_gt(rows, video_ids=None, gt_filter="none"):
    """rows: (video, start, end, label name). Classes are named by first appearance."""
    names = list(dict.fromkeys(r[3] for r in rows))
    videos = {v: ([], []) for v in (video_ids or dict.fromkeys(r[0] for r in rows))}
    for v, s, e, lab in rows:
        videos[v][0].append((s, e))
        videos[v][1].append(names.index(lab))
    arrays = {
        v: (np.array(segs, dtype=float).reshape(-1, 2), np.array(labs, dtype=np.int64))
        for v, (segs, labs) in videos.items()
    }
    return ground_truth_from_arrays(arrays, names, subset="validation", gt_filter=gt_filter)


def make_pred(rows):
    """rows: (video, start, end, label name, score); rows keep their order within each video."""
    videos: dict[str, list] = {}
    for v, s, e, lab, score in rows:
        videos.setdefault(v, []).append((s, e, lab, score))
    return predictions_from_arrays(
        {
            v: (np.array([d[:2] for d in ds], float), np.array([d[3] for d in ds]), np.array([d[2] for d in ds]))
            for v, ds in videos.items()
        }
    )


def ap_of(gt_rows, pred_rows, thresholds=(0.5,), cls="a", **gt_kw):
    m = evaluate_detections(make_gt(gt_rows, **gt_kw), make_pred(pred_rows), thresholds)
    return m.ap[m.class_names.index(cls)]


# --------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------


def test_perfect_prediction_scores_100():
    gt = [("v1", 1.0, 5.0, "a"), ("v1", 7.0, 9.0, "b"), ("v2", 0.0, 3.0, "a")]
    pred = [(v, s, e, lab, 0.9) for v, s, e, lab in gt]
    m = evaluate_detections(make_gt(gt), make_pred(pred))
    assert m.average_mAP == pytest.approx(100.0)
    assert m.mAP == pytest.approx([100.0] * 10)
    assert m.to_json()["recall"]["0.95"] == pytest.approx(100.0)


def test_one_tp_one_fp_known_ap():
    gt = [("v1", 0.0, 2.0, "a"), ("v1", 10.0, 12.0, "a")]
    # ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3
    pred = [("v1", 0.0, 2.0, "a", 0.9), ("v1", 4.0, 6.0, "a", 0.8), ("v1", 10.0, 12.0, "a", 0.7)]
    assert ap_of(gt, pred)[0] == pytest.approx(0.5 + 1 / 3, abs=1e-15)
    # a single GT found after one FP: precision 1/2 at recall 1 -> AP 0.5; found first -> AP 1
    one = gt[:1]
    assert ap_of(one, [("v1", 4.0, 6.0, "a", 0.9), ("v1", 0.0, 2.0, "a", 0.8)])[0] == 0.5
    assert ap_of(one, [("v1", 0.0, 2.0, "a", 0.9), ("v1", 4.0, 6.0, "a", 0.8)])[0] == 1.0


def test_equal_scores_rank_in_input_order():
    gt = [("v1", 0.0, 2.0, "a")]
    fp, tp = ("v1", 4.0, 6.0, "a", 0.5), ("v1", 0.0, 2.0, "a", 0.5)
    assert ap_of(gt, [fp, tp])[0] == 0.5  # FP listed first ranks first
    assert ap_of(gt, [tp, fp])[0] == 1.0


def test_equal_tious_walk_ground_truth_in_input_order():
    # the prediction [1, 5] has tIoU 0.6 with both [0, 4] and [2, 6]; it takes the one listed first.
    # the second prediction [2, 6] can only use [2, 6] (tIoU 1/3 with [0, 4]).
    pred = [("v1", 1.0, 5.0, "a", 0.9), ("v1", 2.0, 6.0, "a", 0.8)]
    first_04 = [("v1", 0.0, 4.0, "a"), ("v1", 2.0, 6.0, "a")]
    assert ap_of(first_04, pred)[0] == 1.0  # both TP
    assert ap_of(first_04[::-1], pred)[0] == 0.5  # [2, 6] taken first, the second prediction is FP


def test_class_with_ground_truth_and_no_prediction_counts_as_zero():
    gt = [("v1", 0.0, 2.0, "a"), ("v1", 4.0, 6.0, "b")]
    m = evaluate_detections(make_gt(gt), make_pred([("v1", 0.0, 2.0, "a", 0.9)]), (0.5, 0.75))
    assert m.class_names == ["a", "b"]
    assert m.ap.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert m.mAP == [50.0, 50.0]
    assert m.average_mAP == 50.0
    nothing = evaluate_detections(make_gt(gt), make_pred([]), (0.5, 0.75))
    assert nothing.ap.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert nothing.to_json()["recall@5x"] == {"0.50": 0.0, "0.75": 0.0}


def test_predictions_of_a_class_without_ground_truth_are_ignored():
    gt = [("v1", 0.0, 2.0, "b"), ("v1", 4.0, 6.0, "b")]
    base = [("v1", 0.0, 2.0, "b", 0.5), ("v1", 4.0, 6.0, "b", 0.4)]
    stray = [("v1", 0.0, 2.0, "a", 0.99), ("v9", 0.0, 2.0, "zz", 0.98)]  # class "a" exists, no GT here
    clean = evaluate_detections(make_gt(gt), make_pred(base))
    noisy = evaluate_detections(make_gt(gt), make_pred(stray + base))
    assert noisy.ap.tolist() == clean.ap.tolist() == [[1.0] * 10]
    assert noisy.counts["predictions_class_without_gt"] == 2
    # ActionFormer's evaluator would remap by id here: "a" (id 0) lands on "b"'s index 0 -> AP 0.5.
    # Integer ids into a class list that includes a GT-less class must not collide:
    ids = predictions_from_arrays(
        {"v1": (np.array([[0, 2], [0, 2], [4, 6]], float), np.array([0.99, 0.5, 0.4]), np.array([0, 1, 1]))},
        class_names=["a", "b"],
    )
    assert evaluate_detections(make_gt(gt), ids).ap.tolist() == [[1.0] * 10]


def test_duplicate_prediction_is_a_false_positive():
    gt = [("v1", 0.0, 2.0, "a"), ("v1", 10.0, 12.0, "a")]
    pred = [("v1", 0.0, 2.0, "a", 0.9), ("v1", 0.0, 2.0, "a", 0.8), ("v1", 10.0, 12.0, "a", 0.7)]
    m = evaluate_detections(make_gt(gt), make_pred(pred), (0.5,))
    assert m.ap[0, 0] == pytest.approx(0.5 + 1 / 3, abs=1e-15)  # TP, FP, TP
    assert m.recall[0, 0] == 1.0


def test_greedy_takes_highest_tiou_at_each_threshold():
    # g1 = [0, 10], g2 = [2, 12]. P1 = [1.5, 11.5] (0.9): tIoU 0.739 with g1, 0.905 with g2 -> takes g2.
    # P2 = [2, 12] (0.8): tIoU 1 with g2 (locked), 0.667 with g1.
    gt = [("v1", 0.0, 10.0, "a"), ("v1", 2.0, 12.0, "a")]
    pred = [("v1", 1.5, 11.5, "a", 0.9), ("v1", 2.0, 12.0, "a", 0.8)]
    ap = ap_of(gt, pred, thresholds=(0.5, 0.7, 0.95))
    # 0.5: P1 -> g2, P2 -> g1: AP 1.  0.7: P2 FP: AP 1/2.  0.95: P1 FP (0.905), P2 -> g2: AP 1/2 * 1/2.
    assert ap.tolist() == [1.0, 0.5, 0.25]


def test_zero_union_nan_counts_as_a_match():
    # a reversed GT [5, 3] (length -2) against [0, 2] (length 2): 0 / 0 -> NaN, a match (official)
    assert ap_of([("v1", 5.0, 3.0, "a")], [("v1", 0.0, 2.0, "a", 0.9)], (0.5, 0.95)).tolist() == [1.0, 1.0]


def test_prediction_in_video_outside_subset_is_a_false_positive():
    gt = [("v1", 0.0, 2.0, "a")]
    pred = [("elsewhere", 0.0, 2.0, "a", 0.9), ("v1", 0.0, 2.0, "a", 0.8)]
    m = evaluate_detections(make_gt(gt), make_pred(pred), (0.5,))
    assert m.ap[0, 0] == 0.5
    assert m.counts["predictions_outside_subset"] == 1


def test_gt_filter_actionformer_drops_short_and_duplicate_instances():
    gt = [
        ("v1", 1.0, 2.0, "a"),
        ("v1", 1.0005, 2.0005, "a"),  # duplicate within 1e-3 of a kept one
        ("v1", 1.0, 2.0, "b"),  # same times, other class: kept
        ("v1", 4.0, 4.0005, "a"),  # shorter than 1e-3
        ("v1", 5.0, 3.0, "a"),  # reversed
    ]
    pred = [("v1", 1.0, 2.0, "a", 0.9), ("v1", 1.0, 2.0, "b", 0.9)]
    official = evaluate_detections(make_gt(gt), make_pred(pred), (0.5,))
    filtered = evaluate_detections(make_gt(gt, gt_filter="actionformer"), make_pred(pred), (0.5,))
    assert official.ap[:, 0].tolist() == [0.25, 1.0]  # "a": 1 of 4 found at precision 1
    assert filtered.ap[:, 0].tolist() == [1.0, 1.0]
    assert (official.counts["ground_truth"], filtered.counts["ground_truth"]) == (5, 2)
    assert filtered.counts["ground_truth_filtered_out"] == 3


def test_topkx_recall_counts_only_the_top_k_times_n_predictions():
    gt = [("v1", 0.0, 2.0, "a")]
    pred = [("v1", 5.0, 6.0, "a", 0.9), ("v1", 0.0, 2.0, "a", 0.8)]  # the hit is 2nd: outside top 1x1
    m = evaluate_detections(make_gt(gt), make_pred(pred), (0.5,))
    assert m.to_json()["recall@1x"] == {"0.50": 0.0}
    assert m.to_json()["recall@5x"] == {"0.50": 100.0}


# --------------------------------------------------------------------------------------------
# Fast evaluator == literal reference on random cases (ties, NaN tIoU, thresholds hit exactly)
# --------------------------------------------------------------------------------------------


def random_case(rng: np.random.Generator):
    classes = ["a", "b", "c", "d"]
    videos = [f"v{i}" for i in range(int(rng.integers(1, 6)))]
    gt_rows = []
    for _ in range(int(rng.integers(1, 25))):
        s = float(rng.integers(0, 12))
        e = s + float(rng.choice([0, 1, 2, 3, 4, 6, -2], p=[0.05, 0.2, 0.25, 0.2, 0.15, 0.1, 0.05]))
        gt_rows.append((str(rng.choice(videos)), s, e, str(rng.choice(classes[:3]))))
    pred_rows = []
    for _ in range(int(rng.integers(0, 60))):
        if gt_rows and rng.random() < 0.6:  # near a GT: shifted on a half-unit grid
            v, s, e, lab = gt_rows[int(rng.integers(len(gt_rows)))]
            s, e = s + 0.5 * int(rng.integers(-2, 3)), e + 0.5 * int(rng.integers(-2, 3))
            if rng.random() < 0.2:
                lab = str(rng.choice(classes))
        else:
            s = float(rng.integers(0, 12))
            e = s + float(rng.integers(0, 5))
            v, lab = str(rng.choice([*videos, "outside"])), str(rng.choice(classes))
        pred_rows.append((v, s, e, lab, float(rng.choice([0.1, 0.2, 0.3, 0.5]))))  # many ties
    first = {v: i for i, v in reversed(list(enumerate(r[0] for r in pred_rows)))}
    return videos, gt_rows, sorted(pred_rows, key=lambda r: first[r[0]])  # make_pred's row order


@pytest.mark.parametrize("seed", range(6))
def test_fast_equals_reference_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    thresholds = (*DEFAULT_TIOU_THRESHOLDS, 0.0, 1 / 3, 2 / 3, 1.0)
    top_k = (1, 2, 5)
    for _ in range(40):
        videos, gt_rows, pred_rows = random_case(rng)
        m = evaluate_detections(make_gt(gt_rows, video_ids=videos), make_pred(pred_rows), thresholds, top_k)
        ref = reference_evaluate(gt_rows, pred_rows, thresholds, top_k)
        assert m.class_names == list(ref)
        for c, (ap, recall, topk) in ref.items():
            i = m.class_names.index(c)
            np.testing.assert_allclose(m.ap[i], ap, rtol=0, atol=1e-12)
            np.testing.assert_allclose(m.recall[i], recall, rtol=0, atol=1e-12)
            for ki, k in enumerate(top_k):
                np.testing.assert_allclose(m.topk_recall[k][i], topk[:, ki], rtol=0, atol=1e-12)


def test_fast_equals_reference_on_dense_overlaps():
    # many predictions per GT and overlapping GTs: long greedy contention chains
    rng = np.random.default_rng(123)
    thresholds = np.array(DEFAULT_TIOU_THRESHOLDS)
    gt_rows = [("v", float(s), float(s) + 4.0, "a") for s in rng.integers(0, 20, size=12)]
    pred_rows = [
        ("v", float(s), float(s) + float(w), "a", float(sc))
        for s, w, sc in zip(rng.integers(0, 20, 300), rng.integers(2, 7, 300), rng.integers(0, 5, 300), strict=True)
    ]
    m = evaluate_detections(make_gt(gt_rows), make_pred(pred_rows), thresholds)
    ap, recall, _ = reference_evaluate(gt_rows, pred_rows, thresholds)["a"]
    np.testing.assert_allclose(m.ap[0], ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.recall[0], recall, rtol=0, atol=1e-12)
    assert 0 < ap[0] < 1  # the case is not degenerate


# --------------------------------------------------------------------------------------------
# Loaders, API checks, output
# --------------------------------------------------------------------------------------------


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


DATABASE = {
    "database": {
        "v_1": {
            "subset": "validation",
            "duration": 20.0,
            "annotations": [
                {"segment": [1.0, 3.0], "label": "jump", "label_id": 1},
                {"segment": [5.0, 9.0], "label": "run", "label_id": 0},
            ],
        },
        "v_2": {"subset": "validation", "duration": 10.0, "annotations": []},
        "v_3": {
            "subset": "training",
            "duration": 10.0,
            "annotations": [
                {"segment": [1.0, 2.0], "label": "swim", "label_id": 2},
            ],
        },
    }
}
RESULTS = {
    "results": {
        "v_1": [
            {"segment": [1.0, 3.0], "label": "jump", "score": 0.9},
            {"segment": [5.0, 8.0], "label": "run", "score": 0.8},
        ],
        "v_2": [{"segment": [0.0, 1.0], "label": "run", "score": 0.1}],
    }
}


def test_load_ground_truth_keeps_subset_videos_and_orders_classes_by_label_id(tmp_path):
    gt = load_ground_truth(write_json(tmp_path / "gt.json", DATABASE), "validation")
    assert gt.video_ids == ["v_1", "v_2"]  # v_2 has no instances but is a subset video
    assert gt.class_names == ["run", "jump"]  # by label_id; "swim" has no instance in validation
    assert gt.labels.tolist() == [1, 0]
    assert gt.segments.tolist() == [[1.0, 3.0], [5.0, 9.0]]


def test_json_files_end_to_end(tmp_path):
    gt = load_ground_truth(write_json(tmp_path / "gt.json", DATABASE), "validation")
    m = evaluate_detections(gt, load_predictions(write_json(tmp_path / "p.json", RESULTS)), (0.5, 0.75, 0.8))
    # jump: perfect. run: [5, 8] vs [5, 9] tIoU 0.75 (a TP up to 0.75), then an FP in v_2
    assert m.ap.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    out = m.to_json()
    assert list(out)[:2] == ["average_mAP", "mAP"]
    assert out["mAP"] == {"0.50": 100.0, "0.75": 100.0, "0.80": 50.0}
    assert out["average_mAP"] == pytest.approx(250 / 3)
    assert out["per_class_AP"]["run"] == {"0.50": 100.0, "0.75": 100.0, "0.80": 0.0}
    table = format_table(m)
    assert table.splitlines()[0].split() == ["tIoU", "0.50", "0.75", "0.80", "avg"]
    assert table.splitlines()[1].split() == ["mAP", "100.00", "100.00", "50.00", "83.33"]


def test_predictions_from_objects_with_array_attributes():
    @dataclass
    class Candidates:  # the shape of localization.inference.postprocess.Candidates
        segments: np.ndarray
        scores: np.ndarray
        labels: np.ndarray

    gt = make_gt([("v1", 0.0, 2.0, "a"), ("v1", 4.0, 6.0, "b")])
    dets = {
        "v1": Candidates(
            np.array([[4.0, 6.0], [0.0, 2.0]], np.float32), np.array([0.3, 0.2], np.float32), np.array([1, 0])
        )
    }
    assert evaluate_detections(gt, predictions_from_arrays(dets, ["a", "b"])).average_mAP == 100.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: predictions_from_arrays({"v1": (np.zeros((2, 2)), np.zeros(2), np.array([0, 3]))}, ["a"]),
            "'v1'.labels: label ids must lie in [0, 1)",
        ),
        (
            lambda: predictions_from_arrays({"v1": (np.zeros((1, 3)), np.zeros(1), np.array([0]))}, ["a"]),
            "'v1'.segments",
        ),
        (
            lambda: predictions_from_arrays({"v1": (np.zeros((1, 2)), np.array([np.nan]), np.array([0]))}, ["a"]),
            "'v1'.scores",
        ),
    ],
)
def test_in_memory_input_errors(make, message):
    with pytest.raises(DataError, match=re.escape(message)):
        make()


def test_bad_options_and_empty_ground_truth():
    gt = make_gt([("v1", 0.0, 1.0, "a")])
    with pytest.raises(ConfigError, match="tiou_thresholds"):
        evaluate_detections(gt, make_pred([]), (0.5, 1.5))
    with pytest.raises(ConfigError, match="repeat"):
        evaluate_detections(gt, make_pred([]), (0.5, 0.501))
    with pytest.raises(ConfigError, match="gt_filter"):
        make_gt([("v1", 0.0, 1.0, "a")], gt_filter="strict")
    with pytest.raises(ConfigError, match="top_k"):
        evaluate_detections(gt, make_pred([]), (0.5,), top_k=(0,))
    empty = ground_truth_from_arrays({"v1": (np.zeros((0, 2)), np.zeros(0, np.int64))}, ["a"], "testing")
    with pytest.raises(DataError, match="no annotated instances"):
        evaluate_detections(empty, make_pred([]))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_json_output(tmp_path):
    gt, pred = write_json(tmp_path / "gt.json", DATABASE), write_json(tmp_path / "p.json", RESULTS)
    proc = subprocess.run(
        [sys.executable, "-m", "localization.metrics", str(gt), str(pred), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["average_mAP"] == pytest.approx(80.0)  # jump 100; run 100 at 0.50..0.75, 0 above
    assert list(out["mAP"]) == [f"{0.5 + 0.05 * i:.2f}" for i in range(10)]
    assert out["mAP"]["0.80"] == pytest.approx(50.0)
    assert out["gt_filter"] == "none"


def test_cli_table_and_gt_filter(tmp_path, capsys):
    gt, pred = write_json(tmp_path / "gt.json", DATABASE), write_json(tmp_path / "p.json", RESULTS)
    assert exit_status(cli_main, [str(gt), str(pred), "--gt-filter", "actionformer"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["tIoU", "0.50"]
    assert "gt_filter actionformer: 0 removed" in out


def _bad_inputs(tmp_path: Path):
    good_gt, good_pred = write_json(tmp_path / "gt.json", DATABASE), write_json(tmp_path / "p.json", RESULTS)
    not_json = tmp_path / "broken.json"
    not_json.write_text("{")
    db = json.loads(json.dumps(DATABASE))
    db["database"]["v_1"]["annotations"][0]["segment"] = [1.0]
    bad_seg = write_json(tmp_path / "bad_seg.json", db)
    res = json.loads(json.dumps(RESULTS))
    res["results"]["v_2"][0]["label"] = 3
    bad_label = write_json(tmp_path / "bad_label.json", res)
    res = json.loads(json.dumps(RESULTS))
    del res["results"]["v_1"][1]["score"]
    no_score = write_json(tmp_path / "no_score.json", res)
    return [
        ([str(tmp_path / "missing.json"), str(good_pred)], "missing.json: file not found"),
        ([str(not_json), str(good_pred)], "broken.json: invalid JSON"),
        ([str(write_json(tmp_path / "nodb.json", {"x": 1})), str(good_pred)], "nodb.json: database"),
        ([str(good_gt), str(write_json(tmp_path / "nores.json", {"database": {}}))], "nores.json: results"),
        ([str(bad_seg), str(good_pred)], "bad_seg.json: database.v_1.annotations[0].segment"),
        ([str(good_gt), str(bad_label)], "bad_label.json: results['v_2'][0].label"),
        ([str(good_gt), str(no_score)], "no_score.json: results['v_1'][1].score"),
        ([str(good_gt), str(good_pred), "--subset", "test"], "no video has subset 'test'"),
    ]


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    for argv, message in _bad_inputs(tmp_path):
        assert exit_status(cli_main, argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        assert message in captured.err, (argv, captured.err)
        assert captured.err.count("\n") == 1
