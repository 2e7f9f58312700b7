"""The orchestration: search files, Ray Tune trials, the MLflow record, promotion and final evaluation."""

import os

# Read by Ray when it is imported: every worker line reaches the search's log as it was printed,
# not merged across trials into "[repeated Nx across cluster]" (runner.console).
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
