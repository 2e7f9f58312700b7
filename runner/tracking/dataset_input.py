"""A trial's data as an MLflow dataset input: what fills the runs table's Dataset column.

The dataset is named after the data folder and the feature combination (``synthetic[i3d+slowfast]``),
so trials that differ in ``data.features`` show different datasets. Its digest covers the
annotation file's bytes and, per stream the trial reads, every feature file's name, size and
modification time: statting the files costs milliseconds even on FineAction (about 8,000 files),
where reading them all would cost minutes per trial. Replacing or regenerating a file changes the
digest; copying the whole dataset elsewhere (new times) does too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag

from localization.api import DataConfig
from runner.names import DATASET_CONTEXT

DIGEST_LENGTH = 16  # hex characters shown in the UI; MLflow allows up to 36


def dataset_input(data: DataConfig) -> DatasetInput:
    """The training data of a trial with config `data`, as an MLflow dataset input."""
    annotations = Path(data.annotations)
    digest = hashlib.sha256(annotations.read_bytes() if annotations.is_file() else b"missing")
    files = 0
    for name in data.features:
        stream = data.streams[name]
        for path in sorted(Path(stream.dir).glob(stream.file_pattern.format(video_id="*"))):
            stat = path.stat()
            digest.update(f"{name}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
            files += 1
    profile = {
        "features": list(data.features),
        "feature_files": files,
        "train_subset": data.train_subset,
        "val_subset": data.val_subset,
    }
    dataset = Dataset(
        name=f"{annotations.parent.name}[{'+'.join(data.features)}]",
        digest=digest.hexdigest()[:DIGEST_LENGTH],
        source_type="local",
        source=json.dumps({"uri": str(annotations.resolve())}),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT, "training")])
