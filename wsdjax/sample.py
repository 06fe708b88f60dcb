"""Sample text from a saved state of a run (e.g. a decayed checkpoint).

  from wsdjax import sample
  print(sample.sample_text("runs/quickstart", branch="decay-150", prompt="And God said"))

Plain ancestral sampling with a temperature, one token at a time. Each step runs the
model on a fixed window of `model.seq_len` tokens (the last ones; one compiled shape, no
KV cache): meant for looking at small models, not for serving.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wsdjax import model as model_lib


@functools.lru_cache(maxsize=8)
def _next_token_fn(model_cfg: model_lib.ModelConfig):
  model = model_lib.build_model(model_cfg)

  @jax.jit
  def next_token(params, window, length, key, temperature):
    logits = model.apply({"params": params}, window)[0, length - 1]
    return jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
  return next_token


def generate(params, model_cfg, prompt_ids, max_new_tokens: int, temperature: float = 0.8,
             seed: int = 0) -> list[int]:
  """The ids of `prompt_ids` (non-empty) followed by `max_new_tokens` sampled ones."""
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
    ids.append(int(fn(params, jnp.asarray(window), len(ctx), sub, float(temperature))))
  return ids


def load_tokenizer(workdir, cfg):
  """The tokenizer of the run in `workdir` (SentencePiece: its cached model); None for
  the bigram task, whose tokens are just ids."""
  if cfg.data.source == "bigram":
    return None
  from wsdjax.data import tokenizers
  if cfg.data.tokenizer in ("bytes", "huggingface"):
    return tokenizers.build_tokenizer(cfg, str(workdir), lambda: [])
  from wsdjax import data
  return data.build_pipeline(cfg, workdir=str(workdir)).tokenizer  # loads the cached model


def sample_text(workdir, branch: str = "main", step: int | None = None, prompt: str = "",
                max_new_tokens: int = 200, temperature: float = 0.8, seed: int = 0) -> str:
  """Restore `branch`@`step` (default: its latest save) of the run in `workdir` and
  continue `prompt` by `max_new_tokens` sampled tokens; returns prompt + continuation
  (bigram runs: the token ids, space-separated)."""
  from wsdjax import checkpoint, config as config_lib
  cfg = config_lib.load_run_config(workdir)
  state = checkpoint.restore(str(workdir), branch=branch, step=step)
  tok = load_tokenizer(workdir, cfg)
  prompt_ids = tok.encode(prompt) if tok is not None else []
  start = [tok.eos_id if tok is not None else 0]  # a document starts after an eos
  ids = generate(state.params, cfg.model, start + list(prompt_ids), max_new_tokens,
                 temperature, seed)[1:]
  return tok.decode(ids) if tok is not None else " ".join(map(str, ids))
