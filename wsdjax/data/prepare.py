"""Tokenize a corpus once into a token store (`python -m wsdjax.prepare`; format in
token_store.py).

The work: each input file (documents.py) is read in order; batches of its documents go to
a pool of worker processes (one a core) that hash each document into the train or
validation split (as the 'text' source splits: a hash of its text below `val_fraction`)
and tokenize it; results come back in order and are cut, at document ends, into shards of
about `shard_tokens` tokens. The store is therefore the same whatever the number of
workers or hosts.

Resume: after each shard the file's progress (`prepare/FFFFF.json`: documents consumed,
shards written, done) is written; a rerun skips finished files and, in an unfinished one,
the documents already in its shards. `--shard I/N` takes the input files i with
i % N == I, so N hosts split the work; the join (`store.json`, written last, after every
shard file is checked) happens once every input file is done, by whichever run sees that,
or by `--join`. `prepare/job.json` holds what fixes the output (inputs, tokenizer, split,
shard size); a rerun with other values is refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
import time

import numpy as np

from wsdjax.data import documents as documents_lib
from wsdjax.data import packing
from wsdjax.data import parallel_encode
from wsdjax.data import token_store as store_lib
from wsdjax.data import tokenizers as tokenizers_lib
from wsdjax.data.errors import DataConfigError
from wsdjax.runtime import outputs
from wsdjax.runtime import faults

TOKENIZER_KINDS = ("bytes", "sentencepiece", "huggingface")
JOB = "prepare/job.json"
# SentencePiece trains on a sample of up to this many files, spread over the inputs.
SAMPLE_FILES = 64


@dataclasses.dataclass(frozen=True)
class PrepareArgs:
  """What `python -m wsdjax.prepare` was asked (flags of the same names)."""
  input: str
  output: str
  tokenizer: str = "bytes"
  tokenizer_path: str = ""
  vocab_size: int = 0
  sp_model_type: str = "bpe"
  format: str = "auto"
  text_field: str = "text"
  val_fraction: float = 0.005
  shard_tokens: int = 1 << 26
  workers: int = 0  # 0: one a core
  shard: tuple[int, int] = (0, 1)
  join_only: bool = False
  progress: bool = True


def check_args(a: PrepareArgs) -> None:
  """One-line DataConfigError for an argument that cannot work (before anything is read)."""
  def need(ok, flag, problem, fix):
    if not ok:
      raise DataConfigError(f"{flag}: {problem}; {fix}")
  need(bool(a.input), "--input", "missing", "pass --input 'DIR/*.jsonl.gz' (a file, folder or glob)")
  need(bool(a.output), "--output", "missing", "pass --output DIR, the store's folder")
  need(a.tokenizer in TOKENIZER_KINDS, "--tokenizer", f"unknown tokenizer {a.tokenizer!r}",
       f"use one of {', '.join(TOKENIZER_KINDS)}")
  if a.tokenizer == "sentencepiece":
    need(a.vocab_size > 0, "--vocab_size", f"must be a positive number of pieces, got "
         f"{a.vocab_size}", "e.g. --vocab_size 32000")
    need(a.sp_model_type in ("bpe", "unigram"), "--sp_model_type",
         f"unknown model type {a.sp_model_type!r}", "use bpe or unigram")
  if a.tokenizer == "huggingface":
    need(bool(a.tokenizer_path), "--tokenizer_path", "missing with --tokenizer huggingface",
         "pass --tokenizer_path PATH/tokenizer.json")
  need(a.format in documents_lib.FORMATS, "--format", f"unknown format {a.format!r}",
       f"use one of {', '.join(documents_lib.FORMATS)}")
  need(0 < a.val_fraction < 1, "--val_fraction", f"must be in (0, 1), got {a.val_fraction}",
       "e.g. 0.005")
  need(a.shard_tokens > 0, "--shard_tokens", f"must be positive, got {a.shard_tokens}",
       "e.g. 67108864")
  need(a.workers >= 0, "--workers", f"must be >= 0, got {a.workers}", "0 uses every core")
  index, count = a.shard
  need(count >= 1 and 0 <= index < count, "--shard", f"{index}/{count} names no shard",
       "pass I/N with 0 <= I < N, e.g. --shard 3/16")
  if "://" not in a.output:
    need(not os.path.isfile(a.output), "--output", f"{a.output} is a file",
         "pass a folder (created if absent)")
    run = outputs.run_holding(a.output)
    need(run is None, "--output", f"{a.output} is inside the run {run}",
         "prepare the store outside any run's folder")


# ---- the tokenizer -----------------------------------------------------------------------

def _sample_texts(files, args: PrepareArgs, max_chars: int) -> list[str]:
  """The first documents of up to SAMPLE_FILES files spread over the inputs, about
  `max_chars` characters in all (deterministic: the same on every host)."""
  chosen = files[::max(1, math.ceil(len(files) / SAMPLE_FILES))]
  budget = max(1, max_chars // len(chosen))
  texts = []
  for f in chosen:
    used = 0
    for doc in documents_lib.iter_documents(f.path, documents_lib.file_format(f.path, args.format),
                                            args.text_field):
      texts.append(doc)
      used += len(doc)
      if used >= budget:
        break
  if not texts:
    raise DataConfigError(f"--input: the files matching {args.input!r} hold no document; "
                          "point it at text, or check --format and --text_field")
  return texts


def make_tokenizer(args: PrepareArgs, files, kv, log):
  """The tokenizer of the job: bytes, the tokenizer.json given, or SentencePiece (the one
  in the store if an earlier run or another host trained it, else trained on a sample and
  written there, keeping whichever a concurrent host wrote first)."""
  if args.tokenizer == "bytes":
    return tokenizers_lib.BytesTokenizer()
  if args.tokenizer == "huggingface":
    return tokenizers_lib.HuggingFaceTokenizer(args.tokenizer_path, field="--tokenizer_path")
  key = "tokenizer/sentencepiece.model"
  have = kv.read(key).result()
  if have.state != "value":
    log(f"training a {args.vocab_size}-piece SentencePiece {args.sp_model_type} model on a "
        "sample of the input")
    proto = tokenizers_lib.train_sentencepiece(
        _sample_texts(files, args, tokenizers_lib.SP_TRAIN_MAX_CHARS), args.vocab_size,
        args.sp_model_type, field="--vocab_size")
    kv.write(key, proto, if_equal=have.stamp.generation).result()  # only if still absent
    have = kv.read(key).result()
  return tokenizers_lib.SentencePieceTokenizer(have.value)


def describe_tokenizer(tok, args: PrepareArgs) -> dict:
  desc = tok.describe() | {"vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                           "files": sorted(f"tokenizer/{n}" for n in tok.files())}
  if tok.kind == "sentencepiece":
    desc["model_type"] = args.sp_model_type
  return desc


# ---- progress ----------------------------------------------------------------------------

class Progress:
  """Files, documents, tokens, tokens/s and an ETA (by input bytes): a tqdm bar on a
  terminal, else a line every `every_s` seconds (logs of pod workers)."""

  def __init__(self, total_bytes: int, files: int, enabled: bool, every_s: float = 30.0):
    self.files_total, self.files_done = files, 0
    self.documents = self.tokens = 0
    self._start = time.perf_counter()
    self._enabled, self._every, self._last = enabled, every_s, 0.0
    self._bytes, self._total = 0, total_bytes
    self._bar = None
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, file=sys.stderr,
                       desc="prepare", dynamic_ncols=True)

  def add_bytes(self, n: int) -> None:
    self._bytes += n
    if self._bar is not None:
      self._bar.update(n)

  def update(self, documents: int = 0, tokens: int = 0, file_done: bool = False) -> None:
    self.documents += documents
    self.tokens += tokens
    self.files_done += int(file_done)
    if not self._enabled:
      return
    if self._bar is not None:
      self._bar.set_postfix_str(self._fields(), refresh=False)
      return
    now = time.perf_counter() - self._start
    if file_done or now - self._last >= self._every:
      self._last = now
      eta = (self._total - self._bytes) / (self._bytes / now) if self._bytes and now else 0
      print(f"prepare: {self._fields()}, {100 * self._bytes / max(1, self._total):.0f}% of "
            f"the input, ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)

  def rate(self) -> float:
    return self.tokens / max(1e-9, time.perf_counter() - self._start)

  def _fields(self) -> str:
    return (f"files {self.files_done}/{self.files_total}, {self.documents:,} docs, "
            f"{self.tokens:,} tokens, {self.rate() / 1e6:.2f}M tokens/s")

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


# ---- one input file ----------------------------------------------------------------------

def _record_key(index: int) -> str:
  return f"prepare/{index:05d}.json"


class _FileJob:
  """Tokenizes input file `index` into its shards, resuming from its progress record."""

  def __init__(self, kv, index: int, f, fmt: str, args: PrepareArgs, dtype, progress):
    self.kv, self.index, self.file, self.fmt, self.args = kv, index, f, fmt, args
    self.dtype, self.progress = dtype, progress
    self.record = store_lib.read_json(kv, _record_key(index), "progress record", "--output") or {
        "path": f.path, "size": f.size, "format": fmt, "documents": 0, "done": False,
        "shards": {"train": [], "val": []}}

  def run(self, encoder) -> None:
    skip = self.record["documents"]
    docs = documents_lib.iter_documents(self.file.path, self.fmt, self.args.text_field,
                                        on_bytes=self.progress.add_bytes)
    parts = {"train": [], "val": []}
    counts = {"train": 0, "val": 0}
    buffered = 0  # training tokens not yet in a shard
    batches = parallel_encode.batches(itertools.islice(docs, skip, None),
                                      batch_chars=parallel_encode.batch_chars(self.args.shard_tokens))
    for train, n_train, val, n_val in encoder.map(batches):
      parts["train"].append(train)
      parts["val"].append(val)
      counts["train"] += n_train
      counts["val"] += n_val
      buffered += len(train)
      self.progress.update(n_train + n_val, len(train) + len(val))
      if buffered >= self.args.shard_tokens:
        self._flush(parts, counts, done=False)
        buffered = 0
    self._flush(parts, counts, done=True)
    self.progress.update(file_done=True)

  def _flush(self, parts: dict, counts: dict, done: bool) -> None:
    """Writes the buffered tokens as the next shard of each split, then the record."""
    for split in store_lib.SPLITS:
      tokens = (np.concatenate(parts[split]) if parts[split] else np.zeros(0, self.dtype))
      if len(tokens):
        shards = self.record["shards"][split]
        path = f"{split}/{self.index:05d}-{len(shards):05d}.npy"
        raw, offset = store_lib.npy_bytes(tokens.astype(self.dtype, copy=False))
        _write(self.kv, path, raw, self.args.output)
        shards.append({"path": path, "tokens": int(len(tokens)), "offset": offset,
                       "documents": counts[split]})
      self.record["documents"] += counts[split]
      parts[split].clear()
      counts[split] = 0
    self.record["done"] = done
    _write(self.kv, _record_key(self.index), None, self.args.output, json_value=self.record)
    faults.after_shard()


def _write(kv, key: str, raw: bytes | None, where: str, json_value=None) -> None:
  """A whole file, atomically; a failed write (read-only, full disk) as one line."""
  try:
    if json_value is not None:
      store_lib.write_json(kv, key, json_value)
    else:
      kv.write(key, raw).result()
  except ValueError as e:
    raise DataConfigError(f"--output: cannot write {where}/{key} ({str(e).splitlines()[0]}); "
                          "free space, or choose a folder you may write") from None


# ---- the job -----------------------------------------------------------------------------

def _job(args: PrepareArgs, files, tok=None) -> dict:
  """What fixes the store's content (workers, hosts and resumes do not); without `tok`,
  what is known before the tokenizer is made, and of it what was asked."""
  job = {"format": store_lib.FORMAT, "version": store_lib.VERSION,
         "inputs": [{"path": f.path, "size": f.size} for f in files],
         "input_format": args.format, "text_field": args.text_field,
         "val_fraction": args.val_fraction, "shard_tokens": args.shard_tokens}
  if tok is None:
    asked = {"kind": args.tokenizer}
    if args.tokenizer == "sentencepiece":
      asked |= {"vocab_size": args.vocab_size, "model_type": args.sp_model_type}
    return job | {"tokenizer": asked}
  return job | {"tokenizer": describe_tokenizer(tok, args),
                "dtype": str(packing.token_dtype(tok.vocab_size))}


# What a store folder holds (a folder holding anything else is not taken as an output).
_STORE_ENTRIES = ("store.json", "prepare", "tokenizer", "train", "val")


def _existing_job(args: PrepareArgs, kv) -> dict | None:
  """The job.json already in the output, None for a new store; refuses an output holding
  other files, or a store prepared without a job record."""
  old = store_lib.read_json(kv, JOB, "the job record", "--output")
  if old is None:
    if store_lib.read_json(kv, store_lib.MANIFEST, "the manifest", "--output") is not None:
      raise DataConfigError(f"--output: {args.output} holds a store prepared elsewhere (no "
                            f"{JOB}); choose an empty folder")
    if "://" not in args.output and os.path.isdir(args.output):
      other = sorted(n for n in os.listdir(args.output)
                     if n not in _STORE_ENTRIES and not n.startswith("."))
      if other:
        raise DataConfigError(f"--output: {args.output} holds other files ({other[0]}, ...); "
                              "choose an empty (or new) folder for the store")
  return old


def _same_job(args: PrepareArgs, old: dict, job: dict) -> None:
  """Refuses a rerun whose job differs from the one the output was started with (`job`
  may be the partial one: then only its fields, and of the tokenizer what was asked)."""
  differ = sorted(k for k in set(old) | set(job) if k in job and k != "tokenizer"
                  and old.get(k) != job.get(k))
  old_tok = old.get("tokenizer", {})
  if any(old_tok.get(k) != v for k, v in job["tokenizer"].items()):
    differ.append("tokenizer")
  if differ:
    raise DataConfigError(
        f"--output: {args.output} already holds a different store ({', '.join(differ)} "
        "differ); choose another folder, or rerun with the arguments it was prepared with")


def prepare(args: PrepareArgs, log=print) -> dict:
  """Runs (or resumes) this host's share of the job, then joins the store if every input
  file is done. Returns {"joined": the manifest or None, "files": this share's file count,
  "tokens": tokens tokenized now, "seconds", "tokens_per_s", "workers", "cpu_seconds"
  (of this share's work, the workers included)}."""
  check_args(args)
  files = documents_lib.list_inputs(args.input)
  outputs.check_creatable("--output", args.output)
  try:
    kv = store_lib.open_kvstore(args.output)
    old = _existing_job(args, kv)
  except ValueError as e:  # TensorStore: a bad URL, no access, no network
    if isinstance(e, DataConfigError):
      raise
    raise DataConfigError(f"--output: cannot open {args.output} ({str(e).splitlines()[0]}); "
                          "check the path and your access to it") from None
  nothing = {"files": 0, "tokens": 0, "seconds": 0.0, "tokens_per_s": 0.0, "workers": 0,
             "cpu_seconds": 0.0}
  if args.join_only:
    if old is None:
      raise DataConfigError(f"--join: {args.output} holds no prepared parts; run prepare "
                            "without --join first")
    return nothing | {"joined": join(args, kv, old, log)}
  if old is not None:
    _same_job(args, old, _job(args, files))  # before a tokenizer is trained into it
  _check_first_document(files[0], args)  # a wrong --format or --text_field: nothing written
  tok = make_tokenizer(args, files, kv, log)
  job = _job(args, files, tok)
  if old is not None:
    _same_job(args, old, job)
    manifest = store_lib.read_json(kv, store_lib.MANIFEST, "the manifest", "--output")
    if manifest is not None:
      log(f"prepare: {args.output} is complete already ({manifest['tokens']['train']:,} "
          "training tokens); nothing to do")
      return nothing | {"joined": manifest}
  else:
    for name, raw in tok.files().items():
      _write(kv, f"tokenizer/{name}", raw, args.output)
    _write(kv, JOB, None, args.output, json_value=job)
  result = _run_share(args, kv, files, tok)
  pending = [f.path for i, f in enumerate(files) if not _done(kv, i)]
  if pending:
    log(f"prepare: shard {args.shard[0]}/{args.shard[1]} done; {len(pending)} input file(s) "
        f"of other shards are not (first: {pending[0]}); the last shard to finish joins the "
        "store, or run with --join")
    return result | {"joined": None}
  return result | {"joined": join(args, kv, job, log)}


def _run_share(args: PrepareArgs, kv, files, tok) -> dict:
  """Tokenizes this host's input files (those not done yet) into their shards."""
  index, count = args.shard
  mine = [(i, f) for i, f in enumerate(files) if i % count == index]
  progress = Progress(sum(f.size for _, f in mine), len(mine), args.progress)
  # Bytes need no tokenizing to speak of: reading the input is the bound, and a pool only
  # adds the cost of shipping text to it (docs/performance.md), so its default is one.
  workers = args.workers or (1 if tok.kind == "bytes" else len(os.sched_getaffinity(0)))
  start, cpu = time.perf_counter(), cpu_seconds()
  encoder = parallel_encode.Encoder(tok, args.val_fraction, workers)
  try:
    for i, f in mine:
      file_job = _FileJob(kv, i, f, documents_lib.file_format(f.path, args.format), args,
                          packing.token_dtype(tok.vocab_size), progress)
      if file_job.record["done"]:
        progress.update(file_done=True)
        continue
      file_job.run(encoder)
  finally:
    encoder.close()
    progress.close()
  seconds = time.perf_counter() - start
  return {"files": len(mine), "tokens": progress.tokens, "seconds": seconds,
          "tokens_per_s": progress.tokens / max(seconds, 1e-9), "workers": workers,
          "cpu_seconds": cpu_seconds() - cpu}


def cpu_seconds() -> float:
  """CPU time of this process and its ended children (the workers, once joined)."""
  import resource  # pylint: disable=g-import-not-at-top
  own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _check_first_document(f, args: PrepareArgs) -> None:
  """Reads the first document of `f` (its errors are the input's: DataConfigError)."""
  docs = documents_lib.iter_documents(f.path, documents_lib.file_format(f.path, args.format),
                                      args.text_field)
  next(iter(docs), None)
  docs.close()


def _done(kv, index: int) -> bool:
  record = store_lib.read_json(kv, _record_key(index), "progress record", "--output")
  return bool(record and record.get("done"))


def join(args: PrepareArgs, kv, job: dict, log=print) -> dict:
  """Writes store.json from the progress records of every input file (all done), after
  checking every shard file; the store is complete from then on."""
  records, missing = [], []
  for i, f in enumerate(job["inputs"]):
    record = store_lib.read_json(kv, _record_key(i), "progress record", "--output")
    if not (record and record.get("done")):
      missing.append(f["path"])
    records.append(record)
  if missing:
    raise DataConfigError(f"--join: {len(missing)} of {len(records)} input files are not "
                          f"prepared yet (first: {missing[0]}); run the shards that hold them "
                          "(--shard I/N) first")
  shards = {s: [dict(x) for r in records for x in r["shards"][s]] for s in store_lib.SPLITS}
  tokens = {s: sum(x["tokens"] for x in shards[s]) for s in store_lib.SPLITS}
  documents = {s: sum(x["documents"] for x in shards[s]) for s in store_lib.SPLITS}
  if documents["train"] + documents["val"] == 0:
    raise DataConfigError(f"--input: the {len(records)} input files hold no document (every "
                          "one empty); check --format and --text_field")
  if documents["val"] == 0 or documents["train"] == 0:
    which = "validation" if documents["val"] == 0 else "training"
    raise DataConfigError(
        f"--val_fraction: {args.val_fraction} leaves the {which} split empty (of "
        f"{documents['train'] + documents['val']} documents); prepare into a new folder with "
        "a " + ("larger" if which == "validation" else "smaller") + " --val_fraction")
  manifest = {
      "format": store_lib.FORMAT, "version": store_lib.VERSION, "dtype": job["dtype"],
      "tokenizer": job["tokenizer"], "documents": documents, "tokens": tokens,
      "split": {"val_fraction": job["val_fraction"],
                "rule": "a document is validation iff blake2b-8 of its UTF-8 text, read as a "
                        "big-endian integer / 2^64, is below val_fraction"},
      "text_field": job["text_field"], "shards": shards,
      "inputs": [{"path": r["path"], "size": r["size"], "format": r["format"],
                  "documents": sum(x["documents"] for s in store_lib.SPLITS for x in r["shards"][s]),
                  "tokens": sum(x["tokens"] for s in store_lib.SPLITS for x in r["shards"][s])}
                 for r in records],
      "id": store_lib.store_id(job["tokenizer"], shards)}
  for split in store_lib.SPLITS:
    store_lib.TokenSplit(kv, split, shards[split], np.dtype(job["dtype"]),
                         args.output).check_files()
  _write(kv, store_lib.MANIFEST, None, args.output, json_value=manifest)
  log(f"prepare: wrote {args.output}: {tokens['train']:,} training tokens "
      f"({documents['train']:,} documents), {tokens['val']:,} validation tokens "
      f"({documents['val']:,} documents), {job['dtype']}, {job['tokenizer']['kind']} "
      f"tokenizer of {job['tokenizer']['vocab_size']} ids")
  return manifest
