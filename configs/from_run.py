"""The config a run was started with: `--config configs/from_run.py:W` loads W/config.json,
so `--config.field=value` overrides start from that run's fields, e.g.

  python -m wsdjax.lr --config configs/from_run.py:runs/wsd --config.schedule.decay_fraction=0.3 --plot lr.png

(`python -m wsdjax.fit` prints such a line for the decay it recommends.)
"""

from wsdjax.config import stored


def get_config(workdir: str = ""):
  if not workdir:
    raise ValueError("config: name the run, e.g. --config configs/from_run.py:runs/wsd")
  try:
    return stored.load_run_config(workdir)
  except stored.ConfigError as e:  # config_flags re-raises with one message argument
    raise ValueError(str(e)) from None
