"""Default config: the `make run` job.

A small decoder LM trained with WSD-S on the bundled corpus (King James Bible, byte-level
tokens), three budgets, on whatever devices are present. Every other config starts from
this one and overrides fields, so every field and its meaning is listed here once.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
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
  # Rematerialise each block in the backward pass: 'none' | 'full' (saves memory at scale).
  c.model.remat = "none"
  # Std of the normal initialiser of weight matrices.
  c.model.init_std = 0.02

  # ---- data (wsdjax/data/) ----
  c.data = ml_collections.ConfigDict()
  # Where text comes from: 'bundled' | 'text' | 'tfds' | 'bigram'.
  c.data.source = "bundled"
  # 'text' source: a file path or glob of .txt / .txt.gz files.
  c.data.path = ""
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

  # ---- checkpoints (wsdjax/checkpoint.py) ----
  c.checkpoint = ml_collections.ConfigDict()
  # Save the main branch every this many steps (fork points and decayed states always).
  c.checkpoint.every = 100
  # Main-branch checkpoints kept besides fork points and decayed checkpoints.
  c.checkpoint.keep = 3
  # Write checkpoints in the background while training goes on.
  c.checkpoint.async_save = True

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
