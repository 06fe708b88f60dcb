"""`python -m wsdjax.prepare --input GLOB --output DIR [--tokenizer ...]`: tokenize a corpus
once into a token store that `data.source='tokens'` trains from (wsdjax/data/prepare.py;
the format: wsdjax/data/token_store.py).

  --input 'gs://b/fineweb/*.parquet' | '/data/pile/*.jsonl.zst' | /data/books/  (text,
      JSONL and Parquet; plain, .gz, .zst, .bz2 or .lz4; local or gs://)
  --tokenizer bytes | sentencepiece --vocab_size 32000 | huggingface --tokenizer_path F
  --shard I/N   this host's share of the input files (N hosts; the last to finish joins)
  --join        only join the finished parts into the store

Rerun the same command after a kill: it goes on where it stopped. Prints a progress line
(files, documents, tokens, tokens/s, ETA) and the store's summary.
"""

from __future__ import annotations

from absl import flags

from wsdjax.runtime import cli

_INPUT = flags.DEFINE_string("input", None, "Input files: a file, folder or glob (** for any "
                             "depth), local or gs://.")
_OUTPUT = flags.DEFINE_string("output", None, "The store's folder (local or gs://).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "bytes", "bytes | sentencepiece | huggingface.")
_TOKENIZER_PATH = flags.DEFINE_string("tokenizer_path", "", "huggingface: a tokenizer.json.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 0, "sentencepiece: pieces to train.")
_SP_MODEL_TYPE = flags.DEFINE_string("sp_model_type", "bpe", "sentencepiece: bpe | unigram.")
_FORMAT = flags.DEFINE_string("format", "auto", "auto (by extension) | text | jsonl | parquet.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSONL field / Parquet column of the text.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.005, "Share of documents held out for "
                                   "validation (by a hash of their text).")
_SHARD_TOKENS = flags.DEFINE_integer("shard_tokens", 1 << 26, "Tokens per shard file (about).")
_WORKERS = flags.DEFINE_integer("workers", 0, "Tokenizing processes (0: one a core; bytes: 1).")
_SHARD = flags.DEFINE_string("shard", "0/1", "I/N: this host takes input files i % N == I.")
_JOIN = flags.DEFINE_bool("join", False, "Only join the finished parts into the store.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress.")


def _shard(value: str) -> tuple[int, int]:
  try:
    index, count = (int(x) for x in value.split("/"))
  except ValueError:
    cli.fail(f"--shard: {value!r} is not I/N; pass e.g. --shard 3/16 (host 3 of 16)")
  return index, count


def main(argv):
  from wsdjax.data import prepare as prepare_lib
  if len(argv) > 1:
    cli.fail(f"arguments: unexpected {' '.join(argv[1:])!r}; pass options as --flag=value")
  args = prepare_lib.PrepareArgs(
      input=_INPUT.value or "", output=_OUTPUT.value or "", tokenizer=_TOKENIZER.value,
      tokenizer_path=_TOKENIZER_PATH.value, vocab_size=_VOCAB_SIZE.value,
      sp_model_type=_SP_MODEL_TYPE.value, format=_FORMAT.value, text_field=_TEXT_FIELD.value,
      val_fraction=_VAL_FRACTION.value, shard_tokens=_SHARD_TOKENS.value,
      workers=_WORKERS.value, shard=_shard(_SHARD.value), join_only=_JOIN.value,
      progress=_PROGRESS.value)
  result = prepare_lib.prepare(args)
  if result["tokens"]:
    print(f"prepare: tokenized {result['tokens']:,} tokens of {result['files']} file(s) in "
          f"{result['seconds']:.1f} s ({result['tokens_per_s'] / 1e6:.2f}M tokens/s, "
          f"{result['workers']} worker(s))", flush=True)


if __name__ == "__main__":
  cli.run(main)
