"""`python -m wsdjax.export --workdir W [--branch B] [--step S] --out DIR [--dtype float32]
[--overwrite]`: a saved state of a run as a Hugging Face `LlamaForCausalLM` checkpoint that
`transformers` loads without wsdjax: model.safetensors, config.json,
generation_config.json and the run's tokenizer where it has a Hugging Face form. Refused
with one line, exit 2, nothing written: a model field Llama cannot express, a branch or
step not saved, DIR a file or a non-empty directory (unless --overwrite). The library:
wsdjax/checkpoint/hf_export.py; the mapping: wsdjax/model/hf_llama.py.
"""

from __future__ import annotations

from absl import flags

from wsdjax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of wsdjax.train.")
_BRANCH = flags.DEFINE_string("branch", "main", "main, decay-<N>, merge-<N>, ... (as "
                              "checkpoint.restore takes it).")
_STEP = flags.DEFINE_integer("step", None, "Saved step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Directory to write the HF checkpoint to.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "float32 | bfloat16 | float16.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.")


def main(argv):
  cli.run_workdir(argv, _WORKDIR.value, "usage: --workdir W [--branch B] [--step S] --out DIR")
  if _STEP.value is not None and _STEP.value < 0:
    cli.fail(f"--step: must be a saved step (>= 0), got {_STEP.value}")
  from wsdjax.checkpoint import hf_export  # checks --out and --dtype before any read
  r = hf_export.export_llama(_WORKDIR.value, _OUT.value, _BRANCH.value, _STEP.value,
                             _DTYPE.value, _OVERWRITE.value)
  print(f"exported {r['branch']}@{r['step']} ({r['params']:,} params, {r['dtype']}) as "
        f"LlamaForCausalLM to {r['out']}: {', '.join(r['files'])}")
  print(f"tokenizer: {r['tokenizer']}")


if __name__ == "__main__":
  cli.run(main)
