"""Sampling (wsdjax.sample, wsdjax.model.decoding): the KV-cached model gives the full forward's
logits; cached generation gives the window path's tokens (greedy, seeded temperature and
top-k draws) up to seq_len tokens and slides past it; the CLI prints text from a tiny run;
bad input is one line, exit 2."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli as cli
from wsdjax.model import transformer as model_lib
from wsdjax.analysis import sampling as sample
from wsdjax.runtime.errors import ConfigError

CFG = model_lib.ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64,
                            vocab_size=64, seq_len=24, init_std=0.3)
PROMPT = [3, 17, 5, 9, 60]


def init_params(cfg):
  tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
  return nn.unbox(jax.jit(model_lib.build_model(cfg).init)(jax.random.key(1), tokens)["params"])


@pytest.fixture(scope="module")
def params():
  return init_params(CFG)


# decode=True takes the scan over the stacked layers for 'unrolled' too
@pytest.mark.parametrize("scan_layers, layer_loop", [(True, "unrolled"), (False, "scan")])
def test_cached_logits_equal_the_full_forward(scan_layers, layer_loop):
  cfg = dataclasses.replace(CFG, scan_layers=scan_layers, layer_loop=layer_loop, seq_len=16)
  params = init_params(cfg)
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
  full = jax.jit(model_lib.build_model(cfg).apply)({"params": params}, tokens)
  decoder = model_lib.build_model(cfg).clone(decode=True)
  shapes = jax.eval_shape(decoder.init, jax.random.key(0), tokens)["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  call = jax.jit(lambda cache, x: decoder.apply({"params": params, "cache": cache}, x,
                                                mutable=["cache"]))
  logits, out = call(cache, tokens[:, :6])  # a prefill of 6 positions
  got = [logits]
  for i in range(6, 16):  # then one position per call
    logits, out = call(out["cache"], tokens[:, i:i + 1])
    got.append(logits)
  np.testing.assert_allclose(np.concatenate(got, axis=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature, top_k, seed", [(0.0, 0, 0), (1.0, 0, 7), (0.9, 5, 3)])
def test_cached_generation_gives_the_window_paths_tokens(params, temperature, top_k, seed):
  n = CFG.seq_len - len(PROMPT) + 1  # every token of both paths sees its whole context
  window = sample.generate(params, CFG, PROMPT, n, temperature, seed, top_k)
  cached = sample.generate_cached(params, CFG, PROMPT, n, temperature, seed, top_k)
  assert cached == window and len(cached) == len(PROMPT) + n
  if temperature:  # another seed, other draws
    assert sample.generate_cached(params, CFG, PROMPT, n, temperature, seed + 1, top_k) != cached


def test_top_k_1_is_greedy_and_the_cache_slides_past_seq_len(params):
  greedy = sample.generate_cached(params, CFG, PROMPT, 8, 0.0)
  assert sample.generate_cached(params, CFG, PROMPT, 8, 1.5, seed=4, top_k=1) == greedy
  long = sample.generate_cached(params, CFG, PROMPT, 3 * CFG.seq_len, 1.0, seed=1)
  window = sample.generate(params, CFG, PROMPT, 3 * CFG.seq_len, 1.0, seed=1)
  assert len(long) == len(PROMPT) + 3 * CFG.seq_len
  assert all(0 <= t < CFG.vocab_size for t in long)
  assert long[:CFG.seq_len + 1] == window[:CFG.seq_len + 1]


def test_a_bigram_prompt_is_token_ids():
  assert sample.prompt_ids(None, " 3 17  5 ", 64) == [3, 17, 5]
  assert sample.prompt_ids(None, "", 64) == [0]
  for bad in ("3 x", "64", "-1"):
    with pytest.raises(ConfigError, match=r"--prompt: .* is not a list of token ids"):
      sample.prompt_ids(None, bad, 64)


@pytest.fixture
def run(byte_run):
  """A byte-level tiny run on a small text corpus: main saved at step 5 (shared)."""
  return byte_run


def test_the_cli_prints_text_from_a_saved_state(run):
  out = cli("wsdjax.sample", "--workdir", str(run), "--branch", "main", "--step", "5",
            "--prompt", "In the", "--tokens", "20", "--temperature", "0")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith("In the") and len(out.stdout) > len("In the\n")
  # --prompt '' starts a new document (after an eos); the library is what the CLI calls
  cached = sample.sample_text(run, prompt="", max_new_tokens=8, temperature=0.0)
  assert cached == sample.sample_text(run, prompt="", max_new_tokens=8, temperature=0.0,
                                      cached=False)


@pytest.mark.parametrize("args, start", [
    (["--branch", "decay-9", "--prompt", "x"], "wsdjax: branch: no saved states of "
                                               "'decay-9' in "),
    (["--prompt", "x", "--tokens", "0"], "wsdjax: --tokens: must be a positive number"),
    (["--prompt", "x", "--top_k", "-1"], "wsdjax: --top_k: must be >= 0"),
    ([], "wsdjax: --prompt: missing; pass --prompt TEXT (--prompt '' starts a new document)"),
])
def test_bad_input_is_one_line_and_exit_2(run, args, start):
  out = cli("wsdjax.sample", "--workdir", str(run), *args)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.startswith(start) and out.stderr.count("\n") == 1, out.stderr
  assert out.stdout == ""
