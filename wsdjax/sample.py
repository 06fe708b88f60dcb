"""`python -m wsdjax.sample --workdir W [--branch B] [--step S] --prompt TEXT [--tokens N]
[--temperature T] [--top_k K] [--seed S]`: text sampled from a saved state of a run (e.g.
a decayed checkpoint); the library: wsdjax/analysis/sampling.py."""

from __future__ import annotations

from absl import flags

from wsdjax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
_BRANCH = flags.DEFINE_string("branch", "main", "Branch of the state: main, decay-N, ...")
_STEP = flags.DEFINE_integer("step", None, "Saved step of the branch (default: latest).")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue ('' starts a document).")
_TOKENS = flags.DEFINE_integer("tokens", 200, "Tokens to sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0: greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the K likeliest tokens; 0: all.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the draws.")


def main(argv):
  cli.run_workdir(argv, _WORKDIR.value, "usage: --workdir W [--branch B] [--step S] --prompt "
                  "TEXT [--tokens N] [--temperature T] [--top_k K] [--seed S]")
  if _PROMPT.value is None:
    cli.fail("--prompt: missing; pass --prompt TEXT (--prompt '' starts a new document)")
  if _TOKENS.value <= 0:
    cli.fail(f"--tokens: must be a positive number of tokens, got {_TOKENS.value}; e.g. "
             "--tokens 200")
  if _TOP_K.value < 0:
    cli.fail(f"--top_k: must be >= 0 (0 keeps every token), got {_TOP_K.value}; e.g. "
             "--top_k 40")
  if not 0 <= _TEMPERATURE.value < float("inf"):
    cli.fail(f"--temperature: must be a finite number >= 0 (0 is greedy), got "
             f"{_TEMPERATURE.value}; e.g. --temperature 0.8")
  from wsdjax.analysis import sampling
  print(sampling.sample_text(_WORKDIR.value, _BRANCH.value, _STEP.value, _PROMPT.value,
                             _TOKENS.value, _TEMPERATURE.value, _SEED.value, _TOP_K.value))


if __name__ == "__main__":
  cli.run(main)
