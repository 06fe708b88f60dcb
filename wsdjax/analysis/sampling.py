"""Sampling text from a saved state of a run (behind `python -m wsdjax.sample`).

  from wsdjax.analysis import sampling
  print(sampling.sample_text("runs/quickstart", branch="decay-150", prompt="And God said"))

Ancestral sampling, one token at a time: temperature 0 is greedy (argmax); otherwise a
draw from softmax(logits / temperature), over the top_k largest logits when top_k > 0.
`generate_cached` (what `sample_text` and the CLI use) keeps a KV cache: the prompt is
prefilled in one call, then each token is one incremental step (wsdjax/model/decoding.py,
which also says how a context longer than model.seq_len slides). `generate` is the
reference path: each token runs the model on a window of the last model.seq_len tokens. Up
to seq_len tokens in all, both give the same tokens for the same seed. Bigram runs have no
tokenizer: the prompt and the output are token ids, space-separated. Batch 1, one device:
meant for looking at models, not for serving.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wsdjax.model import decoding
from wsdjax.model import transformer as model_lib


@functools.lru_cache(maxsize=8)
def _next_token_fn(model_cfg: model_lib.ModelConfig):
  model = model_lib.build_model(model_cfg)

  @jax.jit
  def next_token(params, window, length, key, temperature, top_k):
    logits = model.apply({"params": params}, window)[0, length - 1]
    return decoding.choose(logits, key, temperature, top_k)
  return next_token


def generate(params, model_cfg, prompt_ids, max_new_tokens: int, temperature: float = 0.8,
             seed: int = 0, top_k: int = 0) -> list[int]:
  """The ids of `prompt_ids` (non-empty) followed by `max_new_tokens` sampled ones, each
  from a full window of the last model.seq_len tokens (no cache: the reference path)."""
  cfg = model_lib.ModelConfig.from_config(model_cfg)
  ids = [int(i) for i in prompt_ids]
  if not ids:
    raise ValueError("prompt_ids: empty; give at least one token (e.g. the eos id)")
  fn = _next_token_fn(cfg)
  key = jax.random.key(seed)
  window = np.zeros((1, cfg.seq_len), np.int32)
  for _ in range(int(max_new_tokens)):
    ctx = ids[-cfg.seq_len:]
    window[0, :len(ctx)] = ctx
    window[0, len(ctx):] = 0
    key, sub = jax.random.split(key)
    ids.append(int(fn(params, jnp.asarray(window), len(ctx), sub, np.float32(temperature),
                      np.int32(top_k))))
  return ids


@functools.lru_cache(maxsize=8)
def _decoder(model_cfg: model_lib.ModelConfig) -> decoding.Decoder:
  return decoding.Decoder(model_lib.build_model(model_cfg))


def generate_cached(params, model_cfg, prompt_ids, max_new_tokens: int,
                    temperature: float = 0.8, seed: int = 0, top_k: int = 0) -> list[int]:
  """`generate` with a KV cache: a prefill, then one incremental step per token."""
  cfg = model_lib.ModelConfig.from_config(model_cfg)
  return _decoder(cfg).generate(params, prompt_ids, int(max_new_tokens), temperature, top_k,
                                seed)


def load_tokenizer(workdir, cfg):
  """The tokenizer of the run in `workdir` (SentencePiece: the model it cached, never
  retrained here); None for the bigram task, whose tokens are just ids."""
  if cfg.data.source == "bigram":
    return None
  from wsdjax.data import DataConfigError, tokenizers

  def missing():
    raise DataConfigError(f"data.tokenizer: the run's SentencePiece model is missing from "
                          f"{workdir}/tokenizer/; rerun python -m wsdjax.train on the "
                          "workdir, which trains it again")
  return tokenizers.build_tokenizer(cfg, str(workdir), missing)


def prompt_ids(tok, prompt: str, vocab_size: int) -> list[int]:
  """The ids generation starts from: a document start (eos) and the encoded prompt; for a
  bigram run (tok None) the prompt's space-separated ids (token 0 if it is empty)."""
  if tok is not None:
    raw = sum(0xDC80 <= ord(c) <= 0xDCFF for c in prompt)  # bytes argv could not decode
    if raw and tok.kind != "bytes":
      from wsdjax.runtime.errors import ConfigError
      raise ConfigError("--prompt", f"is not valid UTF-8 ({raw} byte(s) are not), and the "
                        f"run's {tok.kind} tokenizer reads text", "pass UTF-8 text (a "
                        "bytes-tokenizer run takes any bytes)")
    return [tok.eos_id] + list(tok.encode(prompt))
  from wsdjax.runtime.errors import ConfigError
  try:
    ids = [int(x) for x in prompt.split()]
  except ValueError:
    ids = None
  if ids is None or not all(0 <= i < vocab_size for i in ids):
    raise ConfigError("--prompt", f"{prompt!r} is not a list of token ids; this is a bigram "
                      "run, whose tokens are ids", f"pass ids in [0, {vocab_size}) separated "
                      "by spaces, e.g. --prompt '3 17 5'")
  return ids or [0]


def sample_text(workdir, branch: str = "main", step: int | None = None, prompt: str = "",
                max_new_tokens: int = 200, temperature: float = 0.8, seed: int = 0,
                top_k: int = 0, cached: bool = True) -> str:
  """Restore `branch`@`step` (default: its latest save) of the run in `workdir` and
  continue `prompt` by `max_new_tokens` sampled tokens; returns prompt + continuation
  (bigram runs: the token ids, space-separated). `cached=False`: the window path."""
  from wsdjax import checkpoint, config as config_lib
  cfg = config_lib.load_run_config(workdir)
  tok = load_tokenizer(workdir, cfg)
  start = prompt_ids(tok, prompt, cfg.model.vocab_size)
  state = checkpoint.restore(str(workdir), branch=branch, step=step)
  fn = generate_cached if cached else generate
  ids = fn(state.params, cfg.model, start, max_new_tokens, temperature, seed, top_k)
  if tok is None:
    return " ".join(map(str, ids))
  return tok.decode(ids[1:])
