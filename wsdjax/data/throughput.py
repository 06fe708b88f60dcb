"""How fast data gets to a pod (`python -m wsdjax.bench --mode data`).

  reader   the tokens source's rows of a local store, one host's share of the paper
           configs' batch (64 rows of 4096 + 1 tokens: 1024 sequences over the 16 hosts of a
           v5e-64), read on the calling thread: tokens/s of wall time and tokens per
           CPU-second (all threads of the process: TensorStore reads on its own pool), so a
           busy or a many-core host reports what one core delivers
  prepare  `python -m wsdjax.prepare` on a corpus for each tokenizer, with 1 and 2 workers:
           tokens/s, and tokens per CPU-second of the whole job (its worker processes
           included) = what a core tokenizes

The need it is measured against: paper_0.1b on a v5e-64 at its 0.37 s step bound reads
4.19M tokens a step over 16 hosts, 0.7M tokens/s a host (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from wsdjax.data import prepare as prepare_lib
from wsdjax.data import token_store
from wsdjax.data import tokens_source

# One v5e-64 host's rows of paper_0.1b's step, and what that host must read a second.
POD_HOST_ROWS = 64
POD_SEQ_LEN = 4096
POD_HOST_TOKENS_PER_S = 0.7e6


def reader(store_path: str, steps: int = 50, rows: int = POD_HOST_ROWS,
           seq_len: int = POD_SEQ_LEN, global_rows: int | None = None) -> dict:
  """Reads `steps` steps of this host's `rows` rows from a store (process 0 of
  global_rows / rows processes, default 16) as the trainer's data thread does."""
  store = token_store.TokenStore(store_path)
  global_rows = global_rows or rows * 16
  source = tokens_source.TokenRows([store], [1.0], seq_len, seed=0, global_batch=global_rows,
                                   local_batch=rows, process_index=0)
  batches = source.batches(0, None)
  next(batches)  # opens the shards
  cpu, wall = prepare_lib.cpu_seconds(), time.perf_counter()
  for _ in range(steps):
    next(batches)
  wall, cpu = time.perf_counter() - wall, prepare_lib.cpu_seconds() - cpu
  tokens = steps * rows * (seq_len + 1)
  return {"rows": rows, "seq_len": seq_len, "steps": steps, "tokens": tokens,
          "seconds": wall, "tokens_per_s": tokens / wall,
          "tokens_per_cpu_s": tokens / max(cpu, 1e-9),
          "need_tokens_per_s": POD_HOST_TOKENS_PER_S,
          "times_need": tokens / max(cpu, 1e-9) / POD_HOST_TOKENS_PER_S}


def bench_corpus(folder: str, files: int = 4, copies: int = 1, docs: int | None = None) -> str:
  """The bundled KJV text (its first `docs` documents) as `files` JSONL files, `copies`
  times over; returns the glob."""
  from wsdjax.data import kjv  # pylint: disable=g-import-not-at-top
  docs = list(kjv.kjv_documents()[:docs]) * copies
  per = -(-len(docs) // files)
  os.makedirs(folder, exist_ok=True)
  for f in range(files):
    with open(os.path.join(folder, f"part-{f}.jsonl"), "w", encoding="utf-8") as out:
      for doc in docs[f * per:(f + 1) * per]:
        out.write(json.dumps({"text": doc}) + "\n")
  return os.path.join(folder, "*.jsonl")


def hf_tokenizer(folder: str, texts, vocab_size: int = 8192) -> str:
  """A byte-level BPE tokenizer.json with eos `</s>`, trained on `texts`; its path."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["</s>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path = os.path.join(folder, "tokenizer.json")
  tok.save(path)
  return path


def prepare(input_glob: str, out: str, tokenizer: str, workers: int, **kwargs) -> dict:
  """One uninterrupted prepare into `out`; of its tokenizing work (the pool's start-up
  included, the tokenizer's training not): tokens, seconds, tokens/s, tokens per CPU-s."""
  args = prepare_lib.PrepareArgs(input=input_glob, output=out, tokenizer=tokenizer,
                                 workers=workers, progress=False, val_fraction=0.05, **kwargs)
  result = prepare_lib.prepare(args, log=lambda *a: None)
  return {"tokenizer": tokenizer, "workers": workers, "tokens": result["tokens"],
          "seconds": result["seconds"], "tokens_per_s": result["tokens_per_s"],
          "tokens_per_cpu_s": result["tokens"] / max(result["cpu_seconds"], 1e-9)}


def run(store: str | None = None, steps: int = 50, copies: int = 3,
        tokenizers=("bytes", "sentencepiece", "huggingface"), workers=(1, 2),
        docs: int | None = None, seq_len: int = POD_SEQ_LEN) -> dict:
  """The data benchmark: prepare on the bundled corpus (`copies` times over) for each
  tokenizer and worker count, then the reader on `store` (default: the bytes store just
  prepared, whose rows are as long as the paper configs')."""
  with tempfile.TemporaryDirectory(prefix="wsdjax-bench-data-") as tmp:
    corpus = bench_corpus(os.path.join(tmp, "corpus"), copies=copies, docs=docs)
    sp = {"vocab_size": 8192}
    hf = {}
    if "huggingface" in tokenizers:
      from wsdjax.data import kjv  # pylint: disable=g-import-not-at-top
      hf = {"tokenizer_path": hf_tokenizer(tmp, kjv.kjv_documents())}
    rows = []
    for tok in tokenizers:
      extra = sp if tok == "sentencepiece" else hf if tok == "huggingface" else {}
      for n in workers:
        rows.append(prepare(corpus, os.path.join(tmp, f"{tok}-{n}"), tok, n, **extra))
    read = reader(store or os.path.join(tmp, f"{tokenizers[0]}-{workers[0]}"), steps,
                  seq_len=seq_len)
    return {"prepare": rows, "reader": read, "cores": len(os.sched_getaffinity(0))}


def table(r: dict) -> str:
  """The results as aligned text lines."""
  read = r["reader"]
  lines = [f"reader    {read['rows']} rows x {read['seq_len'] + 1} tokens a step, "
           f"{read['steps']} steps: {read['tokens_per_s'] / 1e6:.1f}M tokens/s, "
           f"{read['tokens_per_cpu_s'] / 1e6:.1f}M tokens per CPU-s = "
           f"{read['times_need']:.0f}x the 0.7M tokens/s a v5e-64 host needs"]
  by_tok: dict = {}
  for row in r["prepare"]:
    by_tok.setdefault(row["tokenizer"], []).append(row)
  for tok, rows in by_tok.items():
    parts = [f"{row['workers']} worker(s) {row['tokens_per_s'] / 1e6:.2f}M tokens/s "
             f"({row['tokens_per_cpu_s'] / 1e6:.2f}M per CPU-s)" for row in rows]
    scale = (f"; x{rows[-1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f} from "
             f"{rows[0]['workers']} to {rows[-1]['workers']}") if len(rows) > 1 else ""
    lines.append(f"prepare   {tok:13s} {rows[0]['tokens']:,} tokens: " + ", ".join(parts)
                 + scale)
  lines.append(f"(host: {r['cores']} cores)")
  return "\n".join(lines)
