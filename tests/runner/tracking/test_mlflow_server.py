"""A real ``mlflow server`` on 127.0.0.1: a tiny search, a promotion and an evaluation over HTTP,
read back through MLflow's REST API with plain HTTP requests; and the UI page is served.

The server runs light (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``, one worker), in its own
process group, stopped by its process id.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localization.api import exit_status
from runner import evaluate, promote, search
from tests.mlflow_server_process import free_port, start_server, stop_server
from tests.promotable_search import write_promotable_search

EXPERIMENT = "server-e2e"
MODEL = "af-server"


def get(base: str, endpoint: str, **query: str) -> Any:
    """GET a REST endpoint; JSON answer."""
    url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}" if query else f"{base}{endpoint}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def post(base: str, endpoint: str, body: dict[str, Any]) -> Any:
    """POST a REST endpoint that only takes POST (runs/search); JSON answer."""
    request = urllib.request.Request(
        f"{base}{endpoint}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    process = start_server(f"sqlite:///{root / 'db.sqlite'}", root / "artifacts", port, log=root / "server.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def test_search_and_promotion_over_http(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may fall back to an embedded store here
    search_file = write_promotable_search(tmp_path, server, EXPERIMENT, MODEL)
    outcome = search.run(search_file, storage_path=tmp_path / "ray_results", echo=lambda _: None)
    assert outcome.status == "finished"
    assert exit_status(promote.main, [str(search_file)]) == 0
    assert not (tmp_path / "mlflow").exists()

    api = "/api/2.0/mlflow"
    experiment = get(server, f"{api}/experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    runs = post(server, f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})[
        "runs"
    ]

    def tags(run: dict[str, Any]) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    parents = [r for r in runs if tags(r).get("runner.role") == "search"]
    children = [r for r in runs if tags(r).get("runner.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent_id = parents[0]["info"]["run_id"]
    assert parents[0]["info"]["status"] == "FINISHED" and tags(parents[0])["runner.status"] == "finished"
    assert all(tags(c)["mlflow.parentRunId"] == parent_id for c in children)
    assert all(c["info"]["status"] == "FINISHED" for c in children)

    def best_value(run: dict[str, Any]) -> float:
        return next(m["value"] for m in run["data"]["metrics"] if m["key"] == "best_average_mAP")

    best = max(children, key=best_value)
    best_id = best["info"]["run_id"]
    assert tags(parents[0])["runner.best_run_id"] == best_id
    history = get(server, f"{api}/metrics/get-history", run_id=best_id, metric_key="average_mAP")["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2]  # per-epoch metrics with step = epoch
    artifacts = get(server, f"{api}/artifacts/list", run_id=best_id, path="checkpoints/best")["files"]
    expected = {"checkpoints/best/checkpoint.pt", "checkpoints/best/config.yaml"}
    assert expected <= {a["path"] for a in artifacts}

    registered = get(server, f"{api}/registered-models/get", name=MODEL)["registered_model"]
    assert [v["version"] for v in registered["latest_versions"]] == ["1"]
    assert {a["alias"]: a["version"] for a in registered["aliases"]} == {"champion": "1"}
    version = get(server, f"{api}/registered-models/alias", name=MODEL, alias="champion")["model_version"]
    assert version["version"] == "1" and version["run_id"] == best_id
    lineage = {t["key"]: t["value"] for t in version["tags"]}
    assert lineage["child_run_id"] == best_id and lineage["parent_run_id"] == parent_id
    assert lineage["experiment_id"] == experiment["experiment_id"]
    assert float(lineage["metric_value"]) == best_value(best)
    # the model's files went through the server's artifact proxy, not a local path
    model_id = version["source"].removeprefix("models:/")
    logged = get(server, f"{api}/logged-models/{model_id}")["model"]
    assert logged["info"]["artifact_uri"].startswith("mlflow-artifacts:/")

    # the final evaluation works over HTTP too, and its files land on the server
    assert (
        exit_status(
            evaluate.main, [f"models:/{MODEL}@champion", "--out", str(tmp_path / "eval"), "--tracking-uri", server]
        )
        == 0
    )
    evaluations = post(
        server,
        f"{api}/runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "filter": "tags.`runner.role` = 'evaluation'"},
    )["runs"]
    assert len(evaluations) == 1 and tags(evaluations[0])["runner.model_version"] == "1"
    files = get(server, f"{api}/artifacts/list", run_id=evaluations[0]["info"]["run_id"])["files"]
    assert {"metrics.json", "predictions.json", "per_class_ap.csv"} <= {f["path"] for f in files}

    with urllib.request.urlopen(f"{server}/", timeout=30) as response:  # the UI
        assert response.status == 200
        assert response.headers.get_content_type() == "text/html"
        assert b"<!doctype html>" in response.read(200).lower()
