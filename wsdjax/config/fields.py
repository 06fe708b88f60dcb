"""Every config field, its default and its meaning (`base_config()`, which configs/*.py
start from), the dotted view of a config (`flatten`, `set_field`), and the one owner of
what a dotted name means: its default (`default_of`), or why it names no field, with the
closest one (`unknown_field`)."""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections

from wsdjax.runtime.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
  """Every config field with its default and meaning; configs/*.py override fields."""
  c = ml_collections.ConfigDict()
  # Seed for parameter init and data order (the bigram chain has its own seed below).
  c.seed = 0
  # Name shown in logs and reports.
  c.name = "default"

  # ---- model: decoder-only transformer (wsdjax/model/transformer.py) ----
  # The defaults are the model's: `ModelConfig`, which owns the fields and their rules.
  model = _model_defaults()
  c.model = ml_collections.ConfigDict()
  # Transformer blocks.
  c.model.n_layers = model.n_layers
  # Residual stream width.
  c.model.d_model = model.d_model
  # Query heads; head dim = d_model // n_heads.
  c.model.n_heads = model.n_heads
  # Key/value heads (grouped-query attention); must divide n_heads. Equal = plain MHA.
  c.model.n_kv_heads = model.n_kv_heads
  # Hidden width of the SwiGLU MLP.
  c.model.d_ff = model.d_ff
  # Vocabulary size; must equal the tokenizer's (bytes: 256).
  c.model.vocab_size = model.vocab_size
  # Tokens per training sequence (context length).
  c.model.seq_len = model.seq_len
  # Share the token embedding with the LM head.
  c.model.tie_embeddings = model.tie_embeddings
  # Base of the rotary position embedding frequencies.
  c.model.rope_theta = model.rope_theta
  # Compute dtype for activations: float32 on CPU (bf16 is slower there), bfloat16 on TPU/GPU.
  c.model.dtype = model.dtype
  # Scan over layers (fast compile, 'layers' axis on params) instead of unrolling them.
  c.model.scan_layers = model.scan_layers
  # With scan_layers, how the stacked blocks run: 'scan' (lax.scan: compile time flat in
  # depth) | 'unrolled' (a loop over the same stacked parameters: no stacked activation
  # buffers, faster CPU steps where huge pages are off; docs/performance.md).
  c.model.layer_loop = model.layer_loop
  # What each block keeps for the backward pass (the rest is recomputed): 'none' (keep
  # all: fastest, most memory) | 'dots' (keep the weight matmuls' outputs) |
  # 'dots_offload' (those, parked in host memory) | 'full' (keep only the block's input:
  # least memory). `python -m wsdjax.aot` shows what each costs on a TPU slice.
  c.model.remat = model.remat
  # Std of the normal initialiser of weight matrices.
  c.model.init_std = model.init_std
  # Dense matmuls: 'auto' (fast weight-gradient path on CPU, plain elsewhere) | 'xla' | 'cpu_dw'.
  c.model.dense_impl = model.dense_impl
  # Causal attention: 'auto' (query-blocked on CPU, cuDNN flash attention on GPU where it
  # applies, XLA's elsewhere) | 'blocked' | 'xla' | 'cudnn' (NVIDIA GPUs, bfloat16).
  c.model.attention_impl = model.attention_impl
  # LM head + loss: 'auto' (chunked on CPU and GPU, plain on TPU) | 'plain' (the [B, T, V]
  # logits, then cross-entropy) | 'chunked' (over sequence chunks, the logits never built).
  c.model.loss_impl = model.loss_impl
  # SwiGLU's backward: 'auto' (the Pallas kernel on GPU, autodiff elsewhere) | 'xla'
  # (autodiff) | 'vjp' (one float32 expression for both gradients) | 'pallas' (that
  # expression as one Pallas kernel: reads its inputs once; interpreted off the GPU).
  c.model.swiglu_impl = model.swiglu_impl

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

  # ---- training loop (wsdjax/training/trainer.py) ----
  c.train = ml_collections.ConfigDict()
  # Sequences per optimizer step, over all devices and processes.
  c.train.global_batch_size = 16
  # Gradient accumulation: each step is split into this many micro-batches.
  c.train.micro_batches = 1
  # Sequences each data-parallel device (mesh.data x mesh.fsdp of them) processes at once;
  # > 0 sets the micro-batches for each mesh, global_batch_size / (devices x this), in
  # place of train.micro_batches, so slices of different sizes each get their own count.
  c.train.chip_batch_size = 0
  # Console / TensorBoard / JSONL logging period, in steps.
  c.train.log_every = 10
  # Eval of the main branch every this many steps (0: only at decayed checkpoints).
  c.train.eval_every = 100
  # Validation batches per eval (the same fixed batches for every branch and strategy).
  c.train.eval_batches = 4
  # EMA shadows of the params, one per decay (e.g. (0.999,)), evaluated as ema-<d>@<step>
  # at every fork point and decayed checkpoint (wsdjax/training/ema.py); () keeps none.
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

  # ---- LR schedule and branch strategy (wsdjax/schedule/builders.py, wsdjax/schedule/plan.py) ----
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

  # ---- checkpoints (wsdjax/checkpoint/) ----
  c.checkpoint = ml_collections.ConfigDict()
  # Save the main branch every this many steps (fork points and decayed states always).
  c.checkpoint.every = 100
  # Main-branch checkpoints kept besides fork points and decayed checkpoints.
  c.checkpoint.keep = 3
  # Write checkpoints in the background while training goes on.
  c.checkpoint.async_save = True
  # How the state's arrays are stored (Orbax's zarr chunks): 'zstd' (level 1), 'none'
  # (raw), or 'auto': 'none' on the CPU backend (there zstd's CPU time comes out of the
  # step, for a trained float32 state only a little smaller; docs/performance.md), else 'zstd'.
  # Restores read either.
  c.checkpoint.compression = "auto"
  # Record a SHA-256 of every file of a save when it completes and check it before a
  # restore (a changed byte is reported and the save set aside); False: sizes only, for
  # very large states on remote storage where reading every save back costs too much.
  c.checkpoint.checksums = True

  # ---- device mesh (wsdjax/runtime/sharding.py) ----
  c.mesh = ml_collections.ConfigDict()
  # Mesh axis sizes; one may be -1 (filled with the remaining devices).
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # How FSDP-sharded weights reach the matmuls, in the compute dtype: 'each_use' gathers a
  # layer's weights for its forward pass and again for its backward pass, micro-batch by
  # micro-batch (memory: one layer's weights); 'once_per_step' gathers every weight once a
  # step and keeps it through the micro-batches (memory: all of them, 2 bytes a parameter
  # in bfloat16, per device). Gradients are reduce-scattered into the shards either way.
  c.mesh.gather_weights = "each_use"
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


def micro_batches(train_cfg, data_devices: int) -> int:
  """Micro-batches of a step on `data_devices` data-parallel devices (mesh data x fsdp):
  global_batch_size / (data_devices x chip_batch_size) when chip_batch_size is set, else
  train.micro_batches. `validation.validate` checks that it divides."""
  if train_cfg.chip_batch_size > 0:
    return max(train_cfg.global_batch_size // (data_devices * train_cfg.chip_batch_size), 1)
  return train_cfg.micro_batches


def _model_defaults():
  """The model's fields with their defaults: a default `ModelConfig`."""
  from wsdjax.model.transformer import ModelConfig  # local: the model imports jax
  return ModelConfig()


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def set_field(cfg, field: str, value) -> None:
  """Set the dotted `field` (e.g. 'schedule.decay_shape') of `cfg` to `value`, whatever its
  type (a JSON list arrives where a tuple was)."""
  *parents, leaf = field.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


def default_of(field: str):
  """The default of the dotted config `field` (e.g. 'schedule.decay_shape'); None if it
  names no field."""
  node = base_config()
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def unknown_field(field: str) -> ConfigError | None:
  """Why the dotted `field` names no config field, as a ConfigError naming it: a value used
  as a section, an unknown section (the known ones listed), or an unknown key of a section
  (its keys listed, and 'did you mean' the closest: a key of the section whose name is
  close, else a field of another section with the same name); None if it names one."""
  node, path = base_config(), []
  for part in field.split("."):
    where = ".".join(path)
    if not isinstance(node, ml_collections.ConfigDict):
      return ConfigError(field, f"{where} is a value, not a section",
                         f"set it as --config.{where}=...")
    if part not in node:
      sections = sorted(k for k, v in node.items() if isinstance(v, ml_collections.ConfigDict))
      keys = sorted(k for k in node if k not in sections)
      if not path and part not in keys:
        return ConfigError(field, f"unknown config section {part!r}", f"known sections: "
                           f"{', '.join(sections)} (and top-level keys {', '.join(keys)})")
      close = _closest(part, where, node)
      hint = f"did you mean {close}? " if close else ""
      return ConfigError(field, f"unknown config key {part!r} of {where}",
                         f"{hint}known keys: {', '.join(sorted(node))}")
    node = node[part]
    path.append(part)
  return None


def _closest(key: str, section: str, node) -> str | None:
  """The dotted field `key` of `section` was likely meant as: a key of the section whose name
  is close to it, else a field of another section named `key`."""
  close = difflib.get_close_matches(key, list(node), n=1, cutoff=0.6)
  if close:
    return f"{section}.{close[0]}"
  same = [f for f in flatten(base_config()) if f.rsplit(".", 1)[-1] == key]
  return same[0] if same else None
