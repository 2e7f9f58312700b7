"""Trial sizing on CPU and GPU clusters, the fail-fast --address check, and what Ray pickles."""

from __future__ import annotations

import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from localization.errors import ConfigError, InputError
from runner.searchfile.space import make_sampler, sample_configs
from runner.searchfile.spec import ResourcesSpec, SearchOptions, load_search_file
from runner.tracking import mlflow_store
from runner.tune import cluster, recorder
from runner.tune.trial import TrialSetup

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

    tracking_store = mlflow_store.resolve_store(f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", tmp_path)
    client = mlflow_store.connect(tracking_store)
    exp_id = mlflow_store.experiment_id(client, tracking_store, "p")
    assert client.get_experiment(exp_id).artifact_location == (tmp_path / "db" / "artifacts" / "p").as_uri()
    trial_recorder = recorder.TrialRecorder(tracking_store, exp_id, "parent", TrialSetup(spec, num_threads=1))
    assert trial_recorder.client is not None  # a live client is not picklable state
    copy = pickle.loads(pickle.dumps(trial_recorder))
    assert copy.parent_id == "parent" and copy.client.tracking_uri == tracking_store.uri


def test_fractional_gpus_pack_trials_and_other_fractions_above_one_are_refused(tmp_path: Path):
    resources = cluster.trial_resources(ResourcesSpec(gpu=0.25, cpu=1), FOUR_GPUS)
    assert resources == {"cpu": 1, "gpu": 0.25}
    assert cluster.max_concurrent(SearchOptions(), FOUR_GPUS, resources) == 16  # 4 trials per GPU
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"experiment": "g", "search": {"space": {"train.lr": {"value": 1e-4}}}}))
    assert load_search_file(path, ["resources.gpu=2"]).resources.gpu == 2
    with pytest.raises(ConfigError, match=r"s\.yaml: resources\.gpu: must be a fraction of one GPU .* got 1\.5$"):
        load_search_file(path, ["resources.gpu=1.5"])


def test_joining_by_address_turns_token_auth_on_only_where_a_token_is(tmp_path: Path):
    """Ray's own "auto" rule, applied to an explicit address (in a fresh process: the mode is global)."""
    probe = (
        "from runner.tune import cluster; import os; "
        "print(cluster.use_cluster_token(), os.environ.get('RAY_AUTH_MODE'))"
    )
    token = tmp_path / "token"
    token.write_text("0" * 64)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(tmp_path)}

    def mode(**env: str) -> str:
        out = subprocess.run([sys.executable, "-c", probe], env=base | env, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert mode() == "False None"  # no token anywhere (HOME has no .ray/auth_token)
    assert mode(RAY_AUTH_TOKEN_PATH=str(token)) == "True token"
    assert mode(RAY_AUTH_TOKEN_PATH=str(token), RAY_AUTH_MODE="disabled") == "False disabled"  # an explicit choice
