"""The cluster recipes of deploy/ as far as this machine can check them: the Slurm script is valid
bash, the Kubernetes manifests parse, and every command they run is one the project's (and
MLflow's) parsers accept, with a search file and ``--set`` overrides that validate."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import yaml
from mlflow.cli import server as mlflow_server

from runner import search
from runner.searchfile.spec import load_search_file

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
# What the Slurm script's variables stand for in the check of its search command
SLURM_VALUES = {
    "SEARCH_FILE": "search_spaces/fineaction.yaml",
    "address": "10.0.0.1:6379",
    "STORAGE_PATH": "s3://bucket/ray_results",
    "MLFLOW_TRACKING_URI": "http://mlflow-host:5000",
}


def check_search_command(argv: list[str]) -> None:
    """``python -m runner.search ...``: parsed by the command's own parser, its file and --set validated."""
    assert argv[:3] == ["python", "-m", "runner.search"], argv
    args = search._parser().parse_args(argv[3:])
    load_search_file(REPO / args.file, args.overrides, args.num_samples)


def test_slurm_script_is_valid_bash_and_runs_a_search_the_parser_accepts() -> None:
    script = DEPLOY / "slurm" / "search.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert re.search(r"srun .*\n?.*ray start --head", text) and "ray start --block --address" in text
    assert "umask 077" in text and "RAY_AUTH_TOKEN_PATH" in text  # the token: a file only the user reads
    command = next(line for line in text.replace("\\\n", " ").splitlines() if line.startswith("python -m runner."))
    command = re.sub(r"\$(\w+)", lambda m: SLURM_VALUES.get(m.group(1), m.group(0)), command)
    argv = [arg for arg in shlex.split(command) if arg != "$@"]  # "$@": the options sbatch was given
    check_search_command(argv)


def test_kubernetes_manifests_parse_and_their_commands_are_accepted() -> None:
    job = yaml.safe_load((DEPLOY / "kubernetes" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    argv = shlex.split(job["spec"]["entrypoint"])
    check_search_command(argv)
    args = search._parser().parse_args(argv[3:])
    assert args.address == "auto" and str(args.storage_path).startswith("s3://")  # joins the RayJob's cluster

    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "mlflow.yaml").read_text()))
    assert sorted(d["kind"] for d in docs) == ["Deployment", "Service", "Service", "StatefulSet"]
    mlflow = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    argv = shlex.split(mlflow["args"][0])
    assert argv[:3] == ["exec", "mlflow", "server"]
    params = mlflow_server.make_context("server", argv[3:]).params
    assert params["backend_store_uri"].startswith("postgresql+psycopg2://")
    assert params["artifacts_destination"].startswith("s3://")


def test_the_image_installs_an_extra_the_project_declares() -> None:
    dockerfile = (DEPLOY / "kubernetes" / "Dockerfile").read_text()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = re.findall(r'pip install [^"]*"\.\[(\w+)\]"', dockerfile)
    assert wanted and all(name in extras for name in wanted)
