"""Several trials per GPU: ``resources.gpu: 0.5`` on a local Ray that declares one GPU
(a resource only, no real GPU: trials train on CPU). Ray runs two trials at once on that GPU, both
see it as ``CUDA_VISIBLE_DEVICES=0`` and tag their runs so; each run records the node's system
metrics over time (MLflow's monitor, started by the trial's worker)."""

from __future__ import annotations

import pytest
import ray
from mlflow.tracking import MlflowClient

from runner import search
from tests.conftest import write_tiny_search


@pytest.fixture
def one_gpu(monkeypatch):
    assert not ray.is_initialized()
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # workers inherit it
    ray.init(num_cpus=2, num_gpus=1, object_store_memory=150 * 1024**2, include_dashboard=False)
    yield
    ray.shutdown()


def test_two_trials_share_one_gpu_at_once_and_record_system_metrics(one_gpu, tmp_path):
    path = write_tiny_search(tmp_path, "gpu-share", {"gpu": 0.5, "cpu": 0.5}, trials=2, epochs=8, max_concurrent=None)
    outcome = search.run(path, storage_path=tmp_path / "ray_results", echo=lambda _: None)
    assert outcome.status == "finished"
    assert outcome.concurrency == 2  # 1 GPU / 0.5 per trial

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("gpu-share").experiment_id
    runs = client.search_runs([exp_id], "tags.`runner.role` = 'trial'")
    assert len(runs) == 2 and all(r.data.tags["runner.status"] == "finished" for r in runs)
    assert [r.data.tags["runner.cuda_visible_devices"] for r in runs] == ["0", "0"]  # the same GPU
    # they trained at the same time: each logged an epoch before the other logged its last one
    epochs = [sorted(m.timestamp for m in client.get_metric_history(r.info.run_id, "loss")) for r in runs]
    assert all(len(t) == 8 for t in epochs)
    assert max(t[0] for t in epochs) < min(t[-1] for t in epochs)
    for run in runs:
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        memory = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
        assert cpu and memory and all(m.value > 0 for m in memory)
        assert sorted(m.step for m in memory) == list(range(len(memory)))  # a series over time
