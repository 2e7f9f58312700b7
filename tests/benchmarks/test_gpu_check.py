"""benchmarks/gpu_check.py's CPU part: every step of the GPU check that does
not need CUDA runs, at tiny sizes: fp32 and bf16 (CPU autocast) training steps, eager and through
torch.compile (graph capture), bf16 losses tracking fp32, the band attention backends that have a
CPU backward, whole-video and validation inference with post-processing, and the two searches (one
GPU per trial, then two trials on one declared GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu_and_writes_its_json_and_table(tmp_path: Path):
    env = os.environ | {"PYTHONPATH": str(REPO)}  # the checkout's packages, not an installed copy
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(tmp_path)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] and report["machine"]["device"] == "cpu"
    train = report["train"]
    assert {(r["case"], r["precision"]) for r in train} == {
        (case, p) for case in ("THUMOS-size", "FineAction-size") for p in ("fp32", "bf16")
    }
    assert any(r["compiled"] for r in train)  # torch.compile ran on CPU
    assert all(r["bf16_max_rel_diff"] <= 0.05 for r in train if r["precision"] == "bf16")
    attention = report["attention"]  # every band backend with a CPU backward, against banded
    assert [r["backend"] for r in attention["backends"]] == ["banded", "blocks"] and attention["auto"] == "banded"
    assert all(r["max_rel_diff"] <= 1e-3 and r["s_per_call"] > 0 for r in attention["backends"])
    assert report["longest_video"]["segments"] > 0
    assert report["validation"]["videos"] == 16 and report["validation"]["segments"] > 0
    one, half = report["searches"]
    assert (one["gpu_per_trial"], half["gpu_per_trial"]) == (1, 0.5)
    assert one["concurrency"] == 1 and half["concurrency"] == 2  # one declared GPU
    assert half["ran_together"] and half["cuda_visible_devices"] == ["0", "0"]
    assert all(s["peak_memory_gib"] > 0 for s in (one, half))  # from the runs' system metrics
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| train step") == len(train) and "| search, 2 trials" in table
    assert table.count("| band attention") == 2
