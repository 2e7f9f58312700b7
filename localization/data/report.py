"""What a subset's data looks like, and the warnings that catch a wrong time grid before training.

Coverage of a stream on a video is ``((T - 1) * stride + clip) / (duration * fps)``: the share of
the video's frames its T feature steps span. It is ~1 when fps, stride and clip length are right;
a median more than 5 % away from 1 means a wrong fps (a native frame rate where the features were
extracted at 30), a wrong stride, or resized (fixed-length) features read as native ones. Used by
``python -m localization.data``, ``localization.train`` and ``runner.search``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from localization.data.dataset import InferenceDataset, VideoDataset

COVERAGE_TOLERANCE = 0.05  # a median coverage outside 1 +- this is a warning


def stream_coverage(dataset: VideoDataset) -> dict[str, np.ndarray]:
    """Per stream: (V,) coverage of every video of the dataset."""
    out = {}
    for name in dataset.reader.stream_names:
        out[name] = np.array(
            [
                layout.grids[name].span(layout.steps[name]) / (video.duration * video.fps)
                for video, layout in zip(dataset.videos, dataset.layouts, strict=True)
            ]
        )
    return out


def coverage_summary(dataset: VideoDataset) -> dict[str, dict[str, float]]:
    """Per stream: min / median / max coverage."""
    return {
        name: {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}
        for name, values in stream_coverage(dataset).items()
    }


def coverage_warnings(subset: str, coverage: dict[str, dict[str, float]]) -> list[str]:
    """One line per stream whose median coverage is off by more than COVERAGE_TOLERANCE."""
    return [
        f"{subset}: stream {name}: median coverage {c['median']:.3f} (features span {c['median']:.0%} of the "
        f"videos, expected ~100%): check data.default_fps / data.force_default_fps and "
        f"data.streams.{name}.feat_stride / num_frames / downsample (fixed-length features need feat_stride: auto)"
        for name, c in coverage.items()
        if abs(c["median"] - 1.0) > COVERAGE_TOLERANCE
    ]


def data_warnings(datasets: dict[str, VideoDataset]) -> list[str]:
    """Coverage warnings of every subset's dataset."""
    return [line for subset, ds in datasets.items() for line in coverage_warnings(subset, coverage_summary(ds))]


def summarize(dataset: InferenceDataset) -> dict[str, Any]:
    """Counts, feature statistics and coverage of one subset."""
    lengths = np.array(dataset.lengths)
    return {
        "videos": len(dataset.annotations.videos),
        "videos_with_features": len(dataset),
        "skipped_without_features": len(dataset.skipped),
        "instances": int(sum(len(v.segments) for v in dataset.annotations.videos)),
        "dropped": dict(dataset.annotations.dropped),
        "feature_length": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "dims": dict(dataset.reader.dims),
        "dim": dataset.reader.dim,
        "coverage": coverage_summary(dataset),
    }


def format_summary(subset: str, s: dict[str, Any]) -> str:
    """The console form of :func:`summarize`."""
    dropped = ", ".join(f"{reason} {n}" for reason, n in s["dropped"].items())
    length = s["feature_length"]
    dims = " + ".join(f"{name} {dim}" for name, dim in s["dims"].items())
    coverage = "; ".join(
        f"{name} {c['min']:.3f} / {c['median']:.3f} / {c['max']:.3f}" for name, c in s["coverage"].items()
    )
    return (
        f"{subset}: {s['videos']} videos, {s['videos_with_features']} with features "
        f"({s['skipped_without_features']} skipped)\n"
        f"  instances kept {s['instances']}; dropped: {dropped}\n"
        f"  feature length (steps): min {length['min']}, median {length['median']:g}, "
        f"max {length['max']}\n"
        f"  dims: {dims} = {s['dim']}\n"
        f"  coverage (min / median / max): {coverage}"
    )
