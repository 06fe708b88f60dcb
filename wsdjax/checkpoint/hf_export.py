"""A saved state of a run as a Hugging Face `LlamaForCausalLM` checkpoint that
`transformers` loads without wsdjax (the mapping: wsdjax/model/hf_llama.py).

DIR gets model.safetensors (the params in --dtype: float32, bfloat16 or float16),
config.json, generation_config.json and the run's tokenizer where it has a Hugging Face
form: SentencePiece as tokenizer.model plus an equivalent tokenizer.json, a HF
tokenizer.json as itself, the bytes tokenizer as a byte-level tokenizer.json, each with a
tokenizer_config.json for `AutoTokenizer`; the bigram task has none (the report says so). Behind `python -m wsdjax.export`. Default: branch main at its
latest save; a decayed checkpoint is `--branch decay-<N>`. Refused with one line, exit 2,
nothing written: a model field Llama cannot express, a branch or step not saved, DIR a
file or a non-empty directory (unless --overwrite).
"""

from __future__ import annotations

import json
import os
import shutil

from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax.data import DataConfigError, tokenizers
from wsdjax.model import hf_llama
from wsdjax.model import transformer as model_lib
from wsdjax.runtime import files as files_lib
from wsdjax.runtime import outputs

MARKER = "wsdjax_export.json"  # what export leaves in its folder: --overwrite replaces only those


def check_out(out, overwrite: bool = False) -> str:
  """The absolute folder `out` if it may take an export (`outputs.check_folder`: new or
  empty, never in a run's tree; with `overwrite` a folder an earlier export made);
  ConfigError if not."""
  return outputs.check_folder("--out", out, MARKER, overwrite)


def export_llama(workdir, out, branch: str = "main", step: int | None = None,
                 dtype: str = "float32", overwrite: bool = False) -> dict:
  """Write `branch`@`step` (default: its latest save) of the run in `workdir` to the
  directory `out` as a LlamaForCausalLM checkpoint (module doc); returns a report: branch,
  step, out, dtype, params, files, tokenizer (a line). Checks everything before writing;
  `out` appears complete or not at all."""
  out = check_out(out, overwrite)
  hf_llama.check_dtype(dtype)
  cfg = config_lib.load_run_config(workdir)
  model_cfg = model_lib.ModelConfig.from_config(cfg.model)
  hf_llama.check_expressible(model_cfg)
  state = ckpt.restore(str(workdir), branch=branch, step=step)  # one line if not saved
  tensors = hf_llama.llama_tensors(state.params, model_cfg, dtype)
  tok_files, eos_id, tok_note = tokenizer_files(cfg, workdir)
  files = {"config.json": _json(hf_llama.llama_config(model_cfg, dtype, eos_id)),
           "generation_config.json": _json(hf_llama.generation_config(eos_id)), **tok_files}
  report = {"branch": branch, "step": int(state.step), "out": str(out), "dtype": dtype,
            "params": model_lib.param_count(model_cfg), "tokenizer": tok_note,
            "files": sorted([*files, "model.safetensors", MARKER])}
  files[MARKER] = _json(report | {"workdir": os.path.abspath(str(workdir))})
  _write(out, tensors, files)
  return report


def _json(obj) -> bytes:
  return (json.dumps(obj, indent=2) + "\n").encode()


def _write(out, tensors: dict, files: dict[str, bytes]) -> None:
  """model.safetensors (from `tensors`) and `files` into a fresh directory beside `out`,
  which then takes the place of `out`; nothing is left behind if a write fails (and what
  a killed export left there is removed first). A failed write is one line."""
  out = os.path.abspath(out).rstrip(os.sep)
  files_lib.clean_stale_temps(out)
  need = sum(t.nbytes for t in tensors.values()) + sum(len(b) for b in files.values())
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  free = shutil.disk_usage(parent).free
  if free < need:
    raise outputs.OutputFault(f"--out: {parent} has {free / 2**20:.1f} MiB free, the export "
                              f"needs {need / 2**20:.1f} MiB; free space or export elsewhere")
  try:
    _write_files(out, tensors, files)
  except OSError as e:
    raise outputs.write_error("--out", out, e) from None
  except Exception as e:  # safetensors reports a failed write as its own error type
    if "No space left" in str(e):
      raise outputs.write_error("--out", out, OSError(28, "No space left on device")) from None
    raise


def _write_files(out: str, tensors: dict, files: dict[str, bytes]) -> None:
  from safetensors.numpy import save_file
  tmp = f"{out}.tmp-{os.getpid()}"
  os.makedirs(tmp)
  try:
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    for name, data in files.items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(data)
    mode = os.stat(os.path.join(tmp, "config.json")).st_mode  # the umask's, not 0600
    os.chmod(os.path.join(tmp, "model.safetensors"), mode & 0o777)
    if os.path.isdir(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def tokenizer_files(cfg, workdir) -> tuple[dict[str, bytes], int | None, str]:
  """The run's tokenizer in Hugging Face form: files (name -> bytes), the eos id (None if
  the run has none) and a line on what was exported or why nothing was."""
  d = cfg.data
  if d.source == "bigram":
    return {}, None, "none (the bigram task's tokens are bare ids)"
  if d.tokenizer == "bytes":
    tok = hf_llama.bytes_tokenizer()
    return ({"tokenizer.json": tok.to_str().encode(),
             "tokenizer_config.json": _json(_tokenizer_config(tok.id_to_token(0)))},
            0, "bytes, as a tokenizer.json mapping each id to its UTF-8 byte (eos 0)")
  if d.tokenizer == "huggingface":
    try:
      tok = tokenizers.HuggingFaceTokenizer(d.tokenizer_path)
    except DataConfigError as e:
      return {}, None, f"none ({e})"
    with open(d.tokenizer_path, "rb") as f:
      raw = f.read()
    eos = _token_of(raw, tok.eos_id)
    return ({"tokenizer.json": raw,
             "tokenizer_config.json": _json(_tokenizer_config(eos))},
            tok.eos_id, f"Hugging Face tokenizer.json of {d.tokenizer_path}")
  return _sentencepiece_files(cfg, workdir)


def _token_of(tokenizer_json: bytes, token_id: int) -> str:
  from tokenizers import Tokenizer
  return Tokenizer.from_str(tokenizer_json.decode()).id_to_token(token_id)


def _tokenizer_config(eos: str, **extra) -> dict:
  """tokenizer_config.json: `AutoTokenizer` loads tokenizer.json as it is; text is encoded
  as wsdjax encodes it, no bos or eos added."""
  return {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": None,
          "pad_token": None, "add_bos_token": False, "add_eos_token": False,
          "clean_up_tokenization_spaces": False, **extra}


def _sentencepiece_files(cfg, workdir) -> tuple[dict[str, bytes], int | None, str]:
  """The run's cached SentencePiece model as tokenizer.model and tokenizer.json."""
  import sentencepiece as spm
  from etils import epath
  name = f"sentencepiece_{cfg.data.sp_model_type}_{cfg.model.vocab_size}.model"
  path = epath.Path(workdir) / "tokenizer" / name  # where the run cached it
  if not path.exists():
    return {}, None, f"none (no SentencePiece model at {path})"
  proto = path.read_bytes()
  sp = spm.SentencePieceProcessor(model_proto=proto)
  eos_id = sp.eos_id()  # wsdjax's models have one (data/tokenizers.py)
  config = _tokenizer_config(sp.id_to_piece(eos_id), unk_token=sp.id_to_piece(sp.unk_id()))
  return ({"tokenizer.model": proto, "tokenizer.json":
           hf_llama.sentencepiece_tokenizer(proto).to_str().encode(),
           "tokenizer_config.json": _json(config)},
          eos_id, f"SentencePiece ({cfg.data.sp_model_type}) {path}, also as tokenizer.json")
