"""What a module loads at import time: the architecture's rules that import-linter cannot see."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    """Top-level packages in sys.modules after ``statement`` runs in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_promotion_evaluation_and_the_served_model_load_neither_ray_nor_torch() -> None:
    """Ray is no dependency of serving a promoted model; torch loads only when a model runs."""
    loaded = loaded_after("import runner.promote, runner.evaluate, runner.actionformer_pyfunc")
    assert {"mlflow", "localization"} <= loaded  # the statement really imported the modules
    assert "ray" not in loaded
    assert "torch" not in loaded


def test_the_search_command_loads_no_torch() -> None:
    """The science's API is cheap to import: torch loads in the trials, not in the driver at start."""
    loaded = loaded_after("import runner.search")
    assert {"ray", "optuna", "localization"} <= loaded
    assert "torch" not in loaded
