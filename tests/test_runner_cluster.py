"""Trial sizing on CPU and GPU clusters, the fail-fast --address check, and what Ray pickles."""

from __future__ import annotations

import pickle
import re
import socket
from pathlib import Path

import pytest
import ray
import yaml

from localization.errors import InputError
from runner import cluster, recorder, store
from runner.space import make_sampler, sample_configs
from runner.spec import ResourcesSpec, SearchOptions, load_search_file
from runner.trial import TrialSetup

CPU_ONLY = cluster.Cluster(cpus=2, gpus=0, owned=False)
FOUR_GPUS = cluster.Cluster(cpus=32, gpus=4, owned=False)


def test_cpu_only_cluster_ignores_gpus_caps_cpus_and_sets_threads():
    resources = cluster.trial_resources(ResourcesSpec(gpu=1, cpu=4), CPU_ONLY)
    assert resources == {"cpu": 2, "gpu": 0.0}
    assert cluster.torch_threads(resources) == 2
    assert cluster.max_concurrent(SearchOptions(), CPU_ONLY, resources) == 1  # one per 2 CPUs
    assert cluster.max_concurrent(SearchOptions(max_concurrent=3), CPU_ONLY, resources) == 3


def test_gpu_cluster_runs_one_trial_per_gpu_with_default_threads():
    resources = cluster.trial_resources(ResourcesSpec(gpu=1, cpu=4), FOUR_GPUS)
    assert resources == {"cpu": 4, "gpu": 1}
    assert cluster.torch_threads(resources) == 0
    assert cluster.max_concurrent(SearchOptions(), FOUR_GPUS, resources) == 4
    with pytest.raises(InputError, match=r"resources\.gpu"):
        cluster.trial_resources(ResourcesSpec(gpu=8, cpu=1), FOUR_GPUS)


def test_unreachable_address_fails_fast_without_starting_ray():
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(InputError, match=re.escape(f"--address 127.0.0.1:{port}")):
        cluster.start(f"127.0.0.1:{port}")
    assert not ray.is_initialized()


def test_space_and_recorder_survive_plain_pickle(tmp_path: Path):
    """OptunaSearch.save pickles the space, and Ray pickles callbacks into its experiment state."""
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experiment": "p",
                "search": {
                    "space": {
                        "test.nms_method": {"choice": ["soft", "hard"]},
                        "test.nms_sigma": {"uniform": [0.3, 0.9], "when": {"test.nms_method": "soft"}},
                    }
                },
            }
        )
    )
    spec = load_search_file(path)
    space = pickle.loads(pickle.dumps(spec.space))
    expected = sample_configs(spec.space, make_sampler("tpe", 0), 4)
    assert sample_configs(space, make_sampler("tpe", 0), 4) == expected

    tracking_store = store.resolve_store(f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", tmp_path)
    client = store.connect(tracking_store)
    exp_id = store.experiment_id(client, tracking_store, "p")
    assert client.get_experiment(exp_id).artifact_location == (tmp_path / "db" / "artifacts" / "p").as_uri()
    trial_recorder = recorder.TrialRecorder(tracking_store, exp_id, "parent", TrialSetup(spec, num_threads=1))
    assert trial_recorder.client is not None  # a live client is not picklable state
    copy = pickle.loads(pickle.dumps(trial_recorder))
    assert copy.parent_id == "parent" and copy.client.tracking_uri == tracking_store.uri
