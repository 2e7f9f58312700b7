"""The run config: typed sections (data, model, train, test), YAML + ``--set`` loading, validation."""

from localization.config.loading import (
    apply_overrides,
    build_section,
    config_from_dict,
    dump_yaml,
    flatten,
    load_config,
    read_yaml,
    set_dotted,
    to_dict,
)
from localization.config.schema import (
    RUN_SECTIONS,
    DataConfig,
    ModelConfig,
    RunConfig,
    StreamConfig,
    TestConfig,
    TrainConfig,
    inference_div_factor,
    max_div_factor,
    num_levels,
    window_sizes,
)
from localization.config.validation import validate

__all__ = [
    "RUN_SECTIONS",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "StreamConfig",
    "TestConfig",
    "TrainConfig",
    "apply_overrides",
    "build_section",
    "config_from_dict",
    "dump_yaml",
    "flatten",
    "inference_div_factor",
    "load_config",
    "max_div_factor",
    "num_levels",
    "read_yaml",
    "set_dotted",
    "to_dict",
    "validate",
    "window_sizes",
]
