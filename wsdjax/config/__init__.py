"""The config: every field with its default (`fields.base_config`), the whole-config check
(`validation.validate`), the run config a workdir stores and its resume rules (`stored`),
and the paper's setup (`paper`). The names below are the room's interface."""

from wsdjax.config.fields import base_config, flatten, micro_batches, set_field
from wsdjax.config.stored import RUN_CONFIG, load_run_config, to_json
from wsdjax.config.validation import validate
from wsdjax.runtime.errors import ConfigError

__all__ = ["ConfigError", "RUN_CONFIG", "base_config", "flatten", "load_run_config",
           "micro_batches", "set_field", "to_json", "validate"]
