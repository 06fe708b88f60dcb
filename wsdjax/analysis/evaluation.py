"""Evaluate saved states of a run: mean next-token loss, perplexity and bits per byte on the
run's validation batches, or on those of another data source (data.* overrides applied to
the run's stored config; the tokens must stay the model's).

Batches, compiled eval step and reduction are the trainer's (`Trainer.eval_loss`):
`train.eval_batches` batches of `train.global_batch_size` rows of the source's validation
split (rows wrap around a split shorter than that), each row seq_len next-token
predictions; loss = the mean of the per-batch mean losses (`metrics.mean_eval_loss`;
batches are equal: the mean over every token), so on the run's own data it is the
manifest's eval loss. Sharded like
training: the mesh of the run's config (`mesh`) over this host's devices.

bits/byte = total nats / ln 2 / UTF-8 bytes of the evaluated targets: the byte tokenizer
counts one byte per token (the document separator too), so it is loss / ln 2; SentencePiece
and Hugging Face tokenizers count the bytes of the decoded targets (separators dropped);
bigram runs have none.
"""

from __future__ import annotations

import hashlib
import math
import os

import ml_collections
import numpy as np

from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax import data as data_lib
from wsdjax.training import ema
from wsdjax.training import metrics as metrics_lib
from wsdjax.model import transformer as model_lib
from wsdjax.analysis import sampling
from wsdjax.runtime import sharding
from wsdjax.data import packing, sources
from wsdjax.runtime.errors import ConfigError
from wsdjax.schedule.plan import MAIN
from wsdjax.training.steps import StepCache


def with_data_overrides(cfg, overrides: dict | None) -> ml_collections.ConfigDict:
  """A copy of `cfg` with `overrides` ({data field: value}) set; ConfigError naming an
  unknown field or a value of the wrong type."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  for field, value in (overrides or {}).items():
    if field not in out.data:
      raise ConfigError(f"--config.data.{field}", "unknown data field",
                        f"known: {', '.join(sorted(out.data))}")
    try:
      out.data[field] = value
    except TypeError as e:
      raise ConfigError(f"--config.data.{field}", f"cannot use {value!r} ({e})",
                        f"pass a {type(out.data[field]).__name__}") from None
  return out


def token_identity(cfg) -> tuple:
  """What the ids a data config makes mean: bigram ids, or the tokenizer (kind; the
  SentencePiece model the run caches for this kind and size; a tokenizer.json's bytes)."""
  d = cfg.data
  if d.source == "bigram":
    return ("bigram token ids", cfg.model.vocab_size)
  if d.tokenizer == "sentencepiece":
    return ("sentencepiece", d.sp_model_type)
  if d.tokenizer == "huggingface":
    if not os.path.isfile(d.tokenizer_path):
      raise ConfigError("data.tokenizer_path", f"{d.tokenizer_path!r} is not a file",
                        "give the run's tokenizer.json")
    with open(d.tokenizer_path, "rb") as f:
      return ("huggingface", hashlib.sha256(f.read()).hexdigest()[:12])
  return (d.tokenizer,)


def check_same_tokens(run_cfg, cfg) -> None:
  """ConfigError unless `cfg`'s data makes the same tokens as the run's (the model's)."""
  before, after = token_identity(run_cfg), token_identity(cfg)
  if before != after:
    fields = ("source", "tokenizer", "sp_model_type", "tokenizer_path")
    changed = [f for f in fields if run_cfg.data[f] != cfg.data[f]] or ["tokenizer"]
    raise ConfigError(f"data.{changed[-1]}", f"the overrides change the model's tokens "
                      f"({' '.join(map(str, before))} -> {' '.join(map(str, after))}; "
                      f"model.vocab_size={run_cfg.model.vocab_size})",
                      "keep the run's tokenizer fields; override only where the text comes "
                      "from (e.g. data.source, data.path)")


def select_states(workdir, branch: str | None, step: int | None) -> list[tuple[str, int]]:
  """(branch, step) of the states to evaluate: every decayed checkpoint by default; else
  `branch` (main if only `step` is given; an EMA shadow `ema-<d>` too) at `step` (default:
  its latest save)."""
  with ckpt.CheckpointTree(workdir, read_only=True) as tree:
    entries = tree.manifest()
  entries += ema.shadow_entries(entries)  # ema-<d>: restored as their holder's shadow
  saved = sorted({e["branch"] for e in entries})
  if branch is None and step is None:
    refs = [(e["branch"], e["step"]) for e in entries if e.get("decayed")]
    if not refs:
      raise ConfigError("--branch", f"{workdir} has no decayed checkpoint yet",
                        f"pass --branch (saved: {', '.join(saved) or 'none'})")
    return refs
  branch = branch or MAIN
  steps = [e["step"] for e in entries if e["branch"] == branch]
  if not steps:
    raise ConfigError("--branch", f"{workdir} has no saved state of branch {branch!r}",
                      f"saved branches: {', '.join(saved) or 'none'}")
  if step is not None and step not in steps:
    raise ConfigError("--step", f"{branch} has no saved state at step {step}",
                      f"its saved steps: {', '.join(map(str, steps))}")
  return [(branch, steps[-1] if step is None else step)]


def target_bytes(tok, batches: list[np.ndarray]) -> int | None:
  """UTF-8 bytes of the batches' targets (rows[:, 1:]); None without a tokenizer."""
  if tok is None:
    return None
  if tok.kind == "bytes":
    return sum(b[:, 1:].size for b in batches)
  total = 0
  for b in batches:  # consecutive validation rows tile the token stream: decode them joined
    ids = b[:, 1:].reshape(-1)
    total += len(tok.decode(ids[ids != tok.eos_id].tolist()).encode("utf-8"))
  return total


def describe_data(cfg, overrides: dict | None, pipeline) -> str:
  """One line: which data, and how much of it."""
  t, seq_len = cfg.train, cfg.model.seq_len
  what = ("the run's validation set" if not overrides else
          ", ".join(f"data.{k}={v!r}" for k, v in overrides.items()) + ": its validation split")
  rows = pipeline.fingerprint().get("val_rows")
  short = (f"; the split has {rows} rows, so rows repeat"
           if rows is not None and rows < t.eval_batches * t.global_batch_size else "")
  return (f"{what}, {t.eval_batches} batches x {t.global_batch_size} rows x {seq_len} "
          f"tokens{short}")


def whole_file(cfg, data_overrides: dict | None) -> bool:
  """Whether to evaluate all of a text file given by overrides (its every row once) rather
  than a validation split: a `text` source whose path the overrides set, unless they also
  set `val_fraction` (then its split, as training would make it)."""
  given = data_overrides or {}
  return (cfg.data.source == "text" and ("path" in given or "source" in given)
          and "val_fraction" not in given)


def whole_file_batches(cfg, tok) -> tuple[list[np.ndarray], str]:
  """Every row of seq_len+1 tokens of the text at `data.path` (all its documents, packed as
  in training), in batches of `train.global_batch_size` rows; the rows past the last full
  batch are left out (the line says how many). ConfigError if not one batch."""
  rows = packing.PackedRows(packing.concat_documents(
      tok.encode_batch(sources.read_documents(cfg.data.path)), tok.eos_id, tok.vocab_size),
      cfg.model.seq_len)
  size = cfg.train.global_batch_size
  if rows.num_rows < size:
    raise ConfigError("--config.data.path", f"{cfg.data.path} makes {rows.num_rows} rows of "
                      f"model.seq_len+1 tokens, fewer than one batch of {size}",
                      "give more text (or --config.data.val_fraction to use a split)")
  count = rows.num_rows // size
  batches = [rows.gather(np.arange(i * size, (i + 1) * size)) for i in range(count)]
  left = rows.num_rows - count * size
  return batches, (f"the whole of {cfg.data.path}, {count} batches x {size} rows x "
                   f"{cfg.model.seq_len} tokens" + (f" ({left} rows past the last full batch "
                                                    "left out)" if left else ""))


def evaluate_states(workdir, data_overrides: dict | None = None, branch: str | None = None,
                    step: int | None = None, mesh=None, report=None) -> list[dict]:
  """Evaluate the states `select_states` picks on the validation batches of the run's data
  (with `data_overrides`, {data field: value}). One record per state: branch, step, data,
  tokens, loss (mean nats per token), perplexity, bits_per_byte (None: no bytes),
  manifest_eval_loss (on the run's own data). `report(line)` hears the data line."""
  run_cfg = config_lib.load_run_config(workdir)
  cfg = with_data_overrides(run_cfg, data_overrides)
  overrides = {k: cfg.data[k] for k in data_overrides or {} if cfg.data[k] != run_cfg.data[k]}
  config_lib.validate(cfg, None)
  check_same_tokens(run_cfg, cfg)
  refs = select_states(workdir, branch, step)
  if whole_file(cfg, data_overrides):  # the run's tokenizer only: no split to make
    tok = sampling.load_tokenizer(workdir, cfg)
    local, line = whole_file_batches(cfg, tok)
  else:
    pipeline = data_lib.build_pipeline(cfg, workdir=str(workdir))
    tok = pipeline.tokenizer
    local, line = pipeline.eval_batches(), describe_data(cfg, overrides, pipeline)
  if report is not None:
    report(line)
  mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh)
  eval_step = StepCache(cfg, mesh, model_lib.build_model(
      cfg.model, sharding.platform_of(mesh))).eval()
  batches = [data_lib.to_global(b, sharding.batch_sharding(mesh)) for b in local]
  tokens = len(local) * cfg.train.global_batch_size * cfg.model.seq_len
  n_bytes = target_bytes(tok, local)
  with ckpt.CheckpointTree(workdir, read_only=True) as tree:
    manifest = tree.manifest()
  recorded = {(e["branch"], e["step"]): e.get("eval_loss")
              for e in manifest + ema.shadow_entries(manifest)}
  records = []
  for name, at in refs:
    params = ckpt.restore(str(workdir), name, at, mesh=mesh).params
    loss = metrics_lib.mean_eval_loss(eval_step(params, b) for b in batches)  # as the trainer
    del params
    records.append(dict(
        branch=name, step=at, data=overrides or "validation", tokens=tokens, loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=None if n_bytes is None else loss * tokens / math.log(2) / n_bytes,
        manifest_eval_loss=None if overrides else recorded.get((name, at))))
  return records


def format_records(records: list[dict]) -> str:
  """One line per state: branch@step, tokens, loss, perplexity, bits/byte ('-': none)."""
  lines = []
  for r in records:
    bpb = "-" if r["bits_per_byte"] is None else f"{r['bits_per_byte']:.4f}"
    lines.append(f"{r['branch'] + '@' + str(r['step']):<16} tokens {r['tokens']:>10,}  "
                 f"loss {r['loss']:.4f}  perplexity {r['perplexity']:9.3f}  bits/byte {bpb}")
  return "\n".join(lines)

