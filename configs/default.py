"""Default config: the `make run` job.

A small decoder LM (~0.4M params, byte-level) trained with WSD-S on the bundled corpus
(King James Bible), three budgets, on whatever devices are present; a few minutes on 2 CPU
cores. Every field and its meaning is listed in `wsdjax/config/fields.py:base_config`.
"""

from wsdjax.config import base_config


def get_config():
  c = base_config()
  c.name = "default"
  return c
