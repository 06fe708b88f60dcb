"""The config schema, its validation, and the run config stored in a workdir.

`base_config()` lists every field with its default and meaning; configs/*.py start from it.
`validate(config, device_count)` checks the whole config before any compilation or write
and raises `ConfigError`, whose text is one line: `<field>: <what is wrong>; <how to fix>`.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any

import ml_collections
from etils import epath

# ConfigError, the typed error of a bad field, lives in wsdjax.errors so that the modules
# that own a rule (sharding's mesh shape) raise it without importing this module.
from wsdjax.errors import ConfigError  # noqa: F401
from wsdjax.errors import require as _require

RUN_CONFIG = "config.json"


def base_config() -> ml_collections.ConfigDict:
  """Every config field with its default and meaning; configs/*.py override fields."""
  c = ml_collections.ConfigDict()
  # Seed for parameter init and data order (the bigram chain has its own seed below).
  c.seed = 0
  # Name shown in logs and reports.
  c.name = "default"

  # ---- model: decoder-only transformer (wsdjax/model.py) ----
  c.model = ml_collections.ConfigDict()
  # Transformer blocks.
  c.model.n_layers = 2
  # Residual stream width.
  c.model.d_model = 128
  # Query heads; head dim = d_model // n_heads.
  c.model.n_heads = 4
  # Key/value heads (grouped-query attention); must divide n_heads. Equal = plain MHA.
  c.model.n_kv_heads = 4
  # Hidden width of the SwiGLU MLP.
  c.model.d_ff = 512
  # Vocabulary size; must equal the tokenizer's (bytes: 256).
  c.model.vocab_size = 256
  # Tokens per training sequence (context length).
  c.model.seq_len = 128
  # Share the token embedding with the LM head.
  c.model.tie_embeddings = True
  # Base of the rotary position embedding frequencies.
  c.model.rope_theta = 10000.0
  # Compute dtype for activations: float32 on CPU (bf16 is slower there), bfloat16 on TPU/GPU.
  c.model.dtype = "float32"
  # Scan over layers (fast compile, 'layers' axis on params) instead of unrolling them.
  c.model.scan_layers = True
  # With scan_layers, how the stacked blocks run: 'scan' (lax.scan: compile time flat in
  # depth) | 'unrolled' (a loop over the same stacked parameters: no stacked activation
  # buffers, faster CPU steps where huge pages are off; docs/performance.md).
  c.model.layer_loop = "scan"
  # What each block keeps for the backward pass (the rest is recomputed): 'none' (keep
  # all: fastest, most memory) | 'dots' (keep the weight matmuls' outputs) |
  # 'dots_offload' (those, parked in host memory) | 'full' (keep only the block's input:
  # least memory). `python -m wsdjax.aot` shows what each costs on a TPU slice.
  c.model.remat = "none"
  # Std of the normal initialiser of weight matrices.
  c.model.init_std = 0.02
  # Dense matmuls: 'auto' (fast weight-gradient path on CPU, plain elsewhere) | 'xla' | 'cpu_dw'.
  c.model.dense_impl = "auto"
  # Causal attention: 'auto' (query-blocked on CPU, cuDNN flash attention on GPU where it
  # applies, XLA's elsewhere) | 'blocked' | 'xla' | 'cudnn' (NVIDIA GPUs, bfloat16).
  c.model.attention_impl = "auto"
  # LM head + loss: 'auto' (chunked on CPU and GPU, plain on TPU) | 'plain' (the [B, T, V]
  # logits, then cross-entropy) | 'chunked' (over sequence chunks, the logits never built).
  c.model.loss_impl = "auto"
  # SwiGLU's backward: 'auto' (the Pallas kernel on GPU, autodiff elsewhere) | 'xla'
  # (autodiff) | 'vjp' (one float32 expression for both gradients) | 'pallas' (that
  # expression as one Pallas kernel: reads its inputs once; interpreted off the GPU).
  c.model.swiglu_impl = "auto"

  # ---- data (wsdjax/data/) ----
  c.data = ml_collections.ConfigDict()
  # Where text comes from: 'bundled' | 'text' | 'tfds' | 'tokens' | 'bigram'.
  c.data.source = "bundled"
  # 'text' source: a file path or glob of .txt / .txt.gz files. 'tokens' source: a token
  # store written by `python -m wsdjax.prepare` (local folder or gs://bucket/store).
  c.data.path = ""
  # 'tokens' source, instead of data.path: several stores and their weights, e.g.
  # (("gs://b/web", 0.7), ("gs://b/code", 0.3)); each step draws w_i / sum(w) of its rows
  # from store i. The weights may change on resume (from the resume step on).
  c.data.mixture = ()
  # 'tfds' source: dataset name (e.g. 'lm1b'), prepared in array_record format.
  c.data.tfds_name = ""
  # 'tfds' source: data_dir holding the prepared dataset (local path or gs://...).
  c.data.tfds_data_dir = ""
  # 'tfds' source: split names for training and validation.
  c.data.tfds_train_split = "train"
  c.data.tfds_eval_split = "test"
  # 'tfds' source: name of the text feature.
  c.data.text_feature = "text"
  # 'text'/'bundled': fraction of documents held out for validation (deterministic split).
  c.data.val_fraction = 0.02
  # Tokenizer: 'bytes' | 'sentencepiece' (trained on the train split, cached in workdir)
  # | 'huggingface' (a local tokenizer.json given by tokenizer_path).
  c.data.tokenizer = "bytes"
  # 'huggingface': path to tokenizer.json.
  c.data.tokenizer_path = ""
  # 'sentencepiece': model type, 'bpe' or 'unigram'.
  c.data.sp_model_type = "bpe"
  # 'bigram' source: seed of the transition matrix (fixed across runs to compare them).
  c.data.bigram_seed = 1234
  # 'bigram' source: Dirichlet concentration of each row (small = peaked, low entropy).
  c.data.bigram_alpha = 0.1
  # Batches prefetched on a background thread.
  c.data.prefetch = 2

  # ---- training loop (wsdjax/trainer.py) ----
  c.train = ml_collections.ConfigDict()
  # Sequences per optimizer step, over all devices and processes.
  c.train.global_batch_size = 16
  # Gradient accumulation: each step is split into this many micro-batches.
  c.train.micro_batches = 1
  # Console / TensorBoard / JSONL logging period, in steps.
  c.train.log_every = 10
  # Eval of the main branch every this many steps (0: only at decayed checkpoints).
  c.train.eval_every = 100
  # Validation batches per eval (the same fixed batches for every branch and strategy).
  c.train.eval_batches = 4
  # EMA shadows of the params, one per decay (e.g. (0.999,)), evaluated as ema-<d>@<step>
  # at every fork point and decayed checkpoint (wsdjax/ema.py); () keeps none.
  c.train.ema_decays = ()

  # ---- optimizer: clip by global norm, then AdamW ----
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  # Decoupled weight decay, masked off norms and biases.
  c.optimizer.weight_decay = 0.1
  # Global-norm gradient clip (0 disables).
  c.optimizer.grad_clip = 1.0

  # ---- LR schedule and branch strategy (wsdjax/schedules.py, wsdjax/plan.py) ----
  c.schedule = ml_collections.ConfigDict()
  # 'wsd' | 'wsd_s' | 'cyclic_cosine' | 'cosine' | 'linear' | 'constant'.
  c.schedule.name = "wsd_s"
  # Peak learning rate.
  c.schedule.peak_lr = 3e-3
  # Warmup steps from init_lr to peak_lr.
  c.schedule.warmup_steps = 30
  # Budgets B_1 < ... < B_k in steps: one decayed checkpoint per budget.
  c.schedule.budgets = (150, 300, 600)
  # Decay length as a fraction of each budget (d_i = round(fraction * B_i)).
  c.schedule.decay_fraction = 0.1
  # Fixed decay length in steps instead of decay_fraction ('wsd' with one budget); 0 = unset.
  c.schedule.decay_steps = 0
  # LR at step 0.
  c.schedule.init_lr = 0.0
  # End LR of every decay, as a fraction of peak_lr.
  c.schedule.min_lr_ratio = 0.1
  # Warmup shape: 'linear' | 'constant' | 'exponential' | 'cosine'.
  c.schedule.warmup_shape = "linear"
  # Decay shape: 'linear' | 'cosine' | '1-sqrt' | 'exponential'.
  c.schedule.decay_shape = "linear"
  # WSD-S / cyclic cosine: steps of linear re-warmup after each decay (0 = jump to peak).
  c.schedule.rewarmup_steps = 0
  # Optimizer fields that apply during the decays only (every decayed segment), e.g. a
  # higher Adam b2 in the cooldown (Dremov et al. 2025); None keeps the `optimizer` value.
  # grad_clip may change the clip, not switch it on or off (optimizer.grad_clip > 0).
  c.schedule.decay_overrides = ml_collections.ConfigDict()
  c.schedule.decay_overrides.b2 = ml_collections.config_dict.placeholder(float)
  c.schedule.decay_overrides.weight_decay = ml_collections.config_dict.placeholder(float)
  c.schedule.decay_overrides.grad_clip = ml_collections.config_dict.placeholder(float)
  # Merges in the plan ('wsd', 'constant'): at every budget B, main's saves at B, B - M,
  # ... inside (B - merge_window, B] (M = merge_every; 0: merge_window // 4) are averaged
  # with merge_weights ('uniform' = PMA, or a decay shape: WSM) into merge-B; 0 = none.
  c.schedule.merge_window = 0
  c.schedule.merge_every = 0
  c.schedule.merge_weights = "uniform"

  # ---- checkpoints (wsdjax/checkpoint.py) ----
  c.checkpoint = ml_collections.ConfigDict()
  # Save the main branch every this many steps (fork points and decayed states always).
  c.checkpoint.every = 100
  # Main-branch checkpoints kept besides fork points and decayed checkpoints.
  c.checkpoint.keep = 3
  # Write checkpoints in the background while training goes on.
  c.checkpoint.async_save = True
  # How the state's arrays are stored (Orbax's zarr chunks): 'zstd' (level 1), 'none'
  # (raw), or 'auto': 'none' on the CPU backend (there zstd's ~0.18 CPU-s per 100 MB come
  # out of the step, for a trained float32 state only ~10% smaller), else 'zstd'.
  # Restores read either.
  c.checkpoint.compression = "auto"
  # Record a SHA-256 of every file of a save when it completes and check it before a
  # restore (a changed byte is reported and the save set aside); False: sizes only, for
  # very large states on remote storage where reading every save back costs too much.
  c.checkpoint.checksums = True

  # ---- device mesh (wsdjax/sharding.py) ----
  c.mesh = ml_collections.ConfigDict()
  # Mesh axis sizes; one may be -1 (filled with the remaining devices).
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # Logical axis -> mesh axes. Params: embed/mlp/heads/kv_heads/vocab/layers/head_dim;
  # activations: act_batch/act_length/act_embed/act_heads/act_mlp/act_vocab.
  c.mesh.rules = (
      ("act_batch", ("data", "fsdp")),
      ("act_length", None),
      ("act_embed", None),
      ("act_heads", "tensor"),
      ("act_kv_heads", "tensor"),
      ("act_mlp", "tensor"),
      ("act_vocab", "tensor"),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("vocab", "tensor"),
      ("head_dim", None),
      ("layers", None),
      ("norm", None),
  )
  return c


SOURCES = ("bundled", "text", "tfds", "tokens", "bigram")
TOKENIZERS = ("bytes", "sentencepiece", "huggingface")
DTYPES = ("float32", "bfloat16")


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _positive_int(cfg_flat, field: str, allow_zero: bool = False) -> None:
  value = cfg_flat[field]
  ok = isinstance(value, int) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  _require(ok, field, f"must be a {'non-negative' if allow_zero else 'positive'} integer, "
           f"got {value!r}", f"set --config.{field}=<int>")


def _choice(cfg_flat, field: str, choices) -> None:
  value = cfg_flat[field]
  _require(value in choices, field, f"unknown value {value!r}",
           f"use one of {', '.join(map(str, choices))}")


def _choices_of(module: str, name: str) -> tuple:
  """The choices of a field, from the module that owns them (e.g. kernels.attention.IMPLS,
  schedules.DECAY_SHAPES)."""
  import importlib  # local: the owners import jax, which this module does not
  return tuple(getattr(importlib.import_module(f"wsdjax.{module}"), name))


def validate(cfg, device_count: int | None = None) -> None:
  """Check every field and cross-field rule; raise ConfigError on the first problem."""
  flat = flatten(cfg)
  _validate_keys(flat)
  _validate_numbers(flat)
  _require(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool)
           and 0 <= cfg.seed < 2**31, "seed", f"must be an integer in [0, 2**31), got "
           f"{cfg.seed!r}", "e.g. --config.seed=0")
  _validate_model(cfg.model, flat)
  _validate_data(cfg.data, flat)
  _validate_train(cfg.train, flat)
  _validate_optimizer(cfg.optimizer)
  _validate_decay_overrides(cfg.schedule.decay_overrides, cfg.optimizer)
  _validate_schedule(cfg.schedule)
  _choice(flat, "checkpoint.compression", ("auto",) + _choices_of("checkpoint", "COMPRESSIONS"))
  _positive_int(flat, "checkpoint.every")
  _positive_int(flat, "checkpoint.keep", allow_zero=True)
  _validate_mesh(cfg, device_count)


def _validate_keys(flat: dict) -> None:
  """Every key of the config is a known field, and every known field is there."""
  known = flatten(base_config())
  for field in flat:
    if field not in known:
      close = difflib.get_close_matches(field, list(known), n=1, cutoff=0.8) or [
          k for k in known if k.rsplit(".", 1)[-1] == field.rsplit(".", 1)[-1]]
      _require(False, field, "unknown config key",
               f"remove it{' (did you mean ' + close[0] + '?)' if close else ''}")
  for field in known:
    _require(field in flat, field, "missing from the config",
             "start configs from wsdjax.config.base_config()")


def _validate_numbers(flat: dict) -> None:
  """Every number in the config is finite (inf/nan are never a setting: an infinite weight
  decay or epsilon trains nothing, or NaNs)."""
  for field, value in flat.items():
    if isinstance(value, float):
      _require(math.isfinite(value), field, f"must be a finite number, got {value!r}",
               f"set --config.{field}=<number>")


def _validate_model(m, flat: dict) -> None:
  for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "seq_len"):
    _positive_int(flat, f"model.{f}")
  _require(m.d_model % m.n_heads == 0, "model.d_model",
           f"{m.d_model} is not divisible by model.n_heads={m.n_heads}",
           "pick d_model a multiple of n_heads")
  _require(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads",
           f"{m.n_kv_heads} does not divide model.n_heads={m.n_heads}",
           "use a divisor of n_heads (equal for plain multi-head attention)")
  _require((m.d_model // m.n_heads) % 2 == 0, "model.d_model",
           f"head dim {m.d_model // m.n_heads} is odd; rotary embeddings need an even head dim",
           "change d_model or n_heads")
  _choice(flat, "model.dtype", DTYPES)
  _choice(flat, "model.remat", _choices_of("model", "REMAT_POLICIES"))
  _choice(flat, "model.dense_impl", _choices_of("kernels.fast_dense", "IMPLS"))
  _choice(flat, "model.attention_impl", _choices_of("kernels.attention", "IMPLS"))
  _choice(flat, "model.layer_loop", _choices_of("model", "LAYER_LOOPS"))
  _choice(flat, "model.loss_impl", _choices_of("kernels.fused_loss", "IMPLS"))
  _choice(flat, "model.swiglu_impl", _choices_of("kernels.swiglu", "IMPLS"))
  from wsdjax import model as model_lib  # local: the owner of the rest (it imports jax)
  model_lib.ModelConfig.from_config(m)  # raises ConfigError naming model.<field>


def _validate_data(d, flat: dict) -> None:
  _choice(flat, "data.source", SOURCES)
  _choice(flat, "data.tokenizer", TOKENIZERS)
  if d.source == "text":
    _require(bool(d.path), "data.path", "empty but data.source='text'",
             "set --config.data.path=/path/to/*.txt")
  if d.source == "tfds":
    _require(bool(d.tfds_name), "data.tfds_name", "empty but data.source='tfds'",
             "set --config.data.tfds_name=<dataset>")
  if d.source == "tokens":
    from wsdjax.data import tokens_source  # local: the owner of the rule imports numpy
    problem = tokens_source.stores_problem(d)
    if problem:
      raise ConfigError(*problem)
  else:
    _require(not d.mixture, "data.mixture", f"only the 'tokens' source reads a mixture, not "
             f"{d.source!r}", "set --config.data.source=tokens, or --config.data.mixture='()'")
  if d.tokenizer == "huggingface":
    _require(bool(d.tokenizer_path), "data.tokenizer_path", "empty but tokenizer='huggingface'",
             "set --config.data.tokenizer_path=/path/to/tokenizer.json")
  _require(0.0 < d.val_fraction < 1.0, "data.val_fraction",
           f"must be in (0, 1), got {d.val_fraction}", "e.g. 0.02")
  _require(d.bigram_alpha > 0, "data.bigram_alpha", f"must be > 0, got {d.bigram_alpha}",
           "e.g. 0.1")
  _positive_int(flat, "data.prefetch", allow_zero=True)


def _validate_train(t, flat: dict) -> None:
  for f in ("global_batch_size", "micro_batches", "log_every", "eval_batches"):
    _positive_int(flat, f"train.{f}")
  _positive_int(flat, "train.eval_every", allow_zero=True)
  _require(t.global_batch_size % t.micro_batches == 0, "train.micro_batches",
           f"{t.micro_batches} does not divide train.global_batch_size={t.global_batch_size}",
           "pick a divisor of the global batch")
  from wsdjax import ema  # local: the owner of the rule imports jax
  why = ema.problem(t.ema_decays)
  _require(why is None, "train.ema_decays", why or "",
           "e.g. --config.train.ema_decays='(0.999,)'")


def _validate_decay_overrides(d, o) -> None:
  """The decays' optimizer fields: each unset (None) or a value its field allows."""
  field = "schedule.decay_overrides."
  for name in ("b2", "weight_decay", "grad_clip"):
    value = d[name]
    _require(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
             field + name, f"must be a number or None, got {value!r}", "e.g. 0.99")
  _require(d.b2 is None or 0 <= d.b2 < 1, field + "b2", f"must be in [0, 1), got {d.b2}",
           "e.g. 0.99")
  _require(d.weight_decay is None or d.weight_decay >= 0, field + "weight_decay",
           f"must be >= 0, got {d.weight_decay}", "e.g. 0.0")
  _require(d.grad_clip is None or (d.grad_clip > 0 and o.grad_clip > 0), field + "grad_clip",
           f"must be > 0 and optimizer.grad_clip > 0, got {d.grad_clip} and {o.grad_clip}",
           "an override may change the clip but not switch it on or off")


def _validate_optimizer(o) -> None:
  _require(0 <= o.b1 < 1, "optimizer.b1", f"must be in [0, 1), got {o.b1}", "e.g. 0.9")
  _require(0 <= o.b2 < 1, "optimizer.b2", f"must be in [0, 1), got {o.b2}", "e.g. 0.95")
  _require(o.eps > 0, "optimizer.eps", f"must be > 0, got {o.eps}", "e.g. 1e-8")
  _require(o.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}",
           "e.g. 0.1")
  _require(o.grad_clip >= 0, "optimizer.grad_clip", f"must be >= 0, got {o.grad_clip}",
           "0 disables clipping")


def _validate_schedule(s) -> None:
  from wsdjax import plan  # local: plan imports schedules, which is heavier than this module
  from wsdjax.schedules import ScheduleError
  for field, owned in (("name", "NAMES"), ("warmup_shape", "WARMUP_SHAPES"),
                       ("decay_shape", "DECAY_SHAPES")):
    _choice(flatten(s, "schedule."), f"schedule.{field}", _choices_of("schedules", owned))
  budgets = s.budgets
  _require(isinstance(budgets, (tuple, list)) and len(budgets) > 0
           and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in budgets),
           "schedule.budgets",
           f"must be a non-empty tuple of positive step counts, got {budgets!r}",
           "e.g. --config.schedule.budgets='(150,300)'")
  _require(all(a < b for a, b in zip(budgets, budgets[1:])), "schedule.budgets",
           f"must be strictly increasing, got {tuple(budgets)}", "sort them and drop repeats")
  _require(s.peak_lr > 0, "schedule.peak_lr", f"must be > 0, got {s.peak_lr}", "e.g. 3e-3")
  _require(0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio",
           f"must be in [0, 1], got {s.min_lr_ratio}", "e.g. 0.1")
  _require(0 < s.decay_fraction <= 1, "schedule.decay_fraction",
           f"must be in (0, 1], got {s.decay_fraction}", "e.g. 0.1")
  for f in ("warmup_steps", "decay_steps", "rewarmup_steps"):
    _positive_int(flatten(s, "schedule."), f"schedule.{f}", allow_zero=True)
  _require(s.init_lr >= 0, "schedule.init_lr", f"must be >= 0, got {s.init_lr}", "e.g. 0")
  if s.decay_steps and s.name != "wsd":
    raise ConfigError("schedule.decay_steps", f"only 'wsd' takes a fixed decay length, not "
                      f"{s.name!r}", "set decay_fraction instead, or decay_steps=0")
  try:
    plan.make_plan(s)
  except ScheduleError as e:  # the planner's and the schedule builders' typed error
    field = e.arg if e.arg.startswith("schedule.") else f"schedule.{e.arg}"
    raise ConfigError(field, e.problem, e.fix) from None


def _validate_mesh_rules(rules) -> None:
  """Each rule is (logical axis name, a mesh axis | a tuple of them | None)."""
  from wsdjax import sharding  # local: the mesh's owner imports jax, this module does not
  fix = "e.g. ('act_batch', ('data', 'fsdp')); mesh axes: " + ", ".join(sharding.MESH_AXES)
  for rule in rules:
    _require(isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str),
             "mesh.rules", f"{rule!r} is not a (logical name, mesh axes) pair", fix)
    axes = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
    bad = [a for a in axes if a is not None and a not in sharding.MESH_AXES]
    _require(not bad, "mesh.rules", f"rule {tuple(rule)!r} names no mesh axis {bad[0]!r}"
             if bad else "", fix)


def _validate_mesh(cfg, device_count: int | None) -> None:
  _validate_mesh_rules(cfg.mesh.rules)
  if device_count is None:
    return
  from wsdjax import sharding  # local: the mesh's owner imports jax, this module does not
  data, fsdp, tensor = sharding.mesh_shape(cfg.mesh, device_count)
  t = cfg.train
  shards = data * fsdp
  _require(t.global_batch_size % shards == 0, "train.global_batch_size",
           f"{t.global_batch_size} is not divisible by data*fsdp = {shards} devices",
           f"use a multiple of {shards}")
  micro = t.global_batch_size // t.micro_batches
  _require(micro % shards == 0, "train.micro_batches",
           f"micro-batch of {micro} sequences is not divisible by data*fsdp = {shards}",
           "use fewer micro-batches or a larger global batch")
  m = cfg.model
  _require(m.n_heads % tensor == 0, "model.n_heads",
           f"{m.n_heads} is not divisible by mesh.tensor={tensor}", "change heads or the mesh")
  _require(m.n_kv_heads % tensor == 0, "model.n_kv_heads",
           f"{m.n_kv_heads} is not divisible by mesh.tensor={tensor}",
           "change kv heads or the mesh")


# ---- the run config stored in a workdir ----
def to_json(cfg) -> str:
  return json.dumps(cfg.to_dict(), indent=1, sort_keys=True, default=list)


def load_run_config(workdir) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with."""
  path = epath.Path(workdir) / RUN_CONFIG
  if not path.exists():
    raise ConfigError("workdir", f"{workdir} holds no run ({RUN_CONFIG} missing)",
                      "pass the --workdir of a run started with python -m wsdjax.train")
  try:
    raw = json.loads(path.read_text())
  except ValueError as e:
    raise ConfigError("workdir", f"{path} is not valid JSON ({e})",
                      "restore that file from a copy, or start a new --workdir") from None
  if not isinstance(raw, dict):
    raise ConfigError("workdir", f"{path} holds a {type(raw).__name__}, not a config",
                      "restore that file from a copy, or start a new --workdir")
  return _from_json_dict(raw)


def _from_json_dict(raw: dict) -> ml_collections.ConfigDict:
  cfg = base_config()
  flat = flatten(ml_collections.ConfigDict(raw))
  for field, value in flat.items():
    if field in RETIRED_FIELDS:
      continue
    if isinstance(value, list):
      value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    set_field(cfg, field, value)
  return cfg


def set_field(cfg, field: str, value) -> None:
  """Set the dotted `field` (e.g. 'schedule.decay_shape') of `cfg` to `value`, whatever its
  type (a JSON list arrives where a tuple was)."""
  *parents, leaf = field.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


# Fields of earlier versions that a stored run config may hold and that mean nothing now
# (the raw-array checkpoint writer and its idle-priority thread).
RETIRED_FIELDS = ("checkpoint.writer", "checkpoint.write_priority")
