"""python -m wsdjax.prepare: a corpus tokenized once into a token store.

The store must be the same whatever the format the text came in (JSONL, Parquet, text),
the number of workers or hosts (--shard I/N, then the join) and however often the job was
killed and rerun; it is complete only once store.json is written; bad input is one line,
exit 2, and leaves no store that reads as complete."""

import filecmp
import functools
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import prepare_store, run_cli, subprocess_env, write_jsonl_corpus
from wsdjax.data import DataConfigError, build_pipeline
from wsdjax.data import prepare as prepare_lib
from wsdjax.data import token_store


cli = functools.partial(run_cli, "wsdjax.prepare")


def tree(path):
  """{relative path: bytes} of every file under `path`."""
  out = {}
  for root, _, names in os.walk(path):
    for n in names:
      full = os.path.join(root, n)
      out[os.path.relpath(full, path)] = open(full, "rb").read()
  return out


def store_files(path):
  """The files that make up the store (not the job's progress records)."""
  return {k: v for k, v in tree(path).items() if not k.startswith("prepare/")}


def texts_of(glob_pattern):
  docs = []
  for path in sorted(__import__("glob").glob(glob_pattern)):
    docs += [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
  return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """3 JSONL files of KJV text, and the same documents as Parquet files."""
  root = tmp_path_factory.mktemp("corpus")
  jsonl = write_jsonl_corpus(root / "jsonl", files=3, docs_per_file=60)
  for path in sorted(__import__("glob").glob(jsonl)):
    docs = [json.loads(line) for line in open(path, encoding="utf-8")]
    os.makedirs(root / "parquet", exist_ok=True)
    pq.write_table(pa.table({"id": [d["id"] for d in docs], "body": [d["text"] for d in docs]}),
                   root / "parquet" / (os.path.basename(path)[:-6] + ".parquet"),
                   row_group_size=16)
  return root, jsonl, str(root / "parquet" / "*.parquet")


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
  """The JSONL corpus prepared in one uninterrupted run, small shards."""
  out = tmp_path_factory.mktemp("reference") / "store"
  prepare_store(corpus[1], out, shard_tokens=8_000)
  return out


def test_the_store_is_the_corpus_tokenized_readable_with_numpy(corpus, reference):
  manifest = json.load(open(reference / "store.json"))
  assert manifest["format"] == "wsdjax-token-store" and manifest["dtype"] == "uint16"
  assert manifest["tokenizer"] == {"kind": "bytes", "vocab_size": 256, "eos_id": 0, "files": []}
  assert len(manifest["inputs"]) == 3 and all(i["size"] > 0 for i in manifest["inputs"])
  assert len(manifest["shards"]["train"]) > 3  # several shards a file
  docs = texts_of(corpus[1])
  from wsdjax.data import sources
  held = [sources.unit_hash(d) < 0.1 for d in docs]
  for split, keep in (("train", False), ("val", True)):
    want = b"".join(d.encode() + b"\0" for d, h in zip(docs, held) if h == keep)
    shards = [np.load(reference / s["path"]) for s in manifest["shards"][split]]
    assert np.concatenate(shards).tobytes() == np.frombuffer(want, np.uint8).astype(
        np.uint16).tobytes()
    assert manifest["tokens"][split] == len(want)
    assert manifest["documents"][split] == sum(h == keep for h in held)


def test_parquet_text_and_workers_give_the_same_store(corpus, reference, tmp_path):
  parquet = tmp_path / "parquet"
  prepare_store(corpus[2], parquet, shard_tokens=8_000, text_field="body")
  two = tmp_path / "two_workers"
  prepare_store(corpus[1], two, shard_tokens=8_000, workers=2)
  ref = store_files(reference)
  assert store_files(two) == ref
  got = store_files(parquet)
  assert {k: v for k, v in got.items() if k != "store.json"} == {
      k: v for k, v in ref.items() if k != "store.json"}
  a, b = (json.load(open(p / "store.json")) for p in (reference, parquet))
  assert a["id"] == b["id"] and a["tokens"] == b["tokens"]


def test_hosts_share_the_files_and_the_last_one_joins(corpus, reference, tmp_path):
  out = tmp_path / "store"
  first = prepare_lib.prepare(prepare_lib.PrepareArgs(
      corpus[1], str(out), shard_tokens=8_000, val_fraction=0.1, workers=1, progress=False,
      shard=(1, 2)), log=lambda *a: None)
  assert first["joined"] is None and not (out / "store.json").exists()
  with pytest.raises(DataConfigError, match=r"^--join: 2 of 3 input files are not prepared"):
    prepare_lib.prepare(prepare_lib.PrepareArgs(corpus[1], str(out), join_only=True,
                                                val_fraction=0.1, progress=False))
  with pytest.raises(DataConfigError, match=r"^data.path: .* is not a complete token store"):
    token_store.TokenStore(str(out))
  second = prepare_lib.prepare(prepare_lib.PrepareArgs(
      corpus[1], str(out), shard_tokens=8_000, val_fraction=0.1, workers=1, progress=False,
      shard=(0, 2)), log=lambda *a: None)
  assert second["joined"] is not None
  assert store_files(out) == store_files(reference)


def test_a_killed_prepare_resumes_to_the_same_store(corpus, reference, tmp_path):
  out = tmp_path / "store"
  args = ["--input", corpus[1], "--output", str(out), "--shard_tokens", "8000",
          "--val_fraction", "0.1", "--workers", "2"]
  env = subprocess_env() | {"WSDJAX_FAULTS": "kill_after_shard@prepare:4"}
  killed = cli(*args, env=env)
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert not (out / "store.json").exists()
  records = [json.load(open(out / "prepare" / n)) for n in sorted(os.listdir(out / "prepare"))
             if n != "job.json"]
  assert sum(len(r["shards"]["train"]) for r in records) == 4 and not all(
      r["done"] for r in records)
  again = cli(*args)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "prepare: wrote" in again.stdout
  assert store_files(out) == store_files(reference)
  rerun = cli(*args)  # a complete store: nothing to do, nothing changed
  assert rerun.returncode == 0 and "is complete already" in rerun.stdout
  assert store_files(out) == store_files(reference)


def test_a_remote_style_store_goes_through_tensorstore(corpus, tiny_config):
  """memory:// stands for gs://: nothing of the store touches the local disk."""
  manifest = prepare_store(corpus[1], "memory://stores/kjv", shard_tokens=8_000)
  cfg = tiny_config
  cfg.data.source, cfg.data.path, cfg.model.vocab_size = "tokens", "memory://stores/kjv", 256
  pipe = build_pipeline(cfg, process_index=0, process_count=1)
  assert pipe.fingerprint()["stores"] == [manifest["id"]]
  it = pipe.train_iterator(0)
  assert next(it).shape == (8, 33)
  it.close()


def _hf_tokenizer(folder):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel()
  from wsdjax.data import kjv
  tok.train_from_iterator(kjv.kjv_documents()[:300], trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<unk>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  os.makedirs(folder, exist_ok=True)
  tok.save(str(folder / "tokenizer.json"))
  return str(folder / "tokenizer.json")


def test_sentencepiece_and_huggingface_stores_train_with_their_tokenizer(corpus, tmp_path,
                                                                       tiny_config):
  sp = tmp_path / "sp"
  m = prepare_store(corpus[1], sp, tokenizer="sentencepiece", vocab_size=400)
  assert m["tokenizer"]["kind"] == "sentencepiece" and m["tokenizer"]["vocab_size"] == 400
  assert m["tokenizer"]["files"] == ["tokenizer/sentencepiece.model"]
  cfg = tiny_config
  cfg.data.source, cfg.data.path, cfg.model.vocab_size = "tokens", str(sp), 400
  cfg.data.tokenizer = "sentencepiece"
  workdir = tmp_path / "run"
  pipe = build_pipeline(cfg, workdir=str(workdir), process_index=0, process_count=1)
  assert pipe.tokenizer.vocab_size == 400
  # The run keeps the store's model where eval, sample and export look for it.
  cached = workdir / "tokenizer" / "sentencepiece_bpe_400.model"
  assert cached.read_bytes() == (sp / "tokenizer" / "sentencepiece.model").read_bytes()
  cfg.data.sp_model_type = "unigram"
  with pytest.raises(DataConfigError, match=r"^data.sp_model_type: is 'unigram' but .* 'bpe'"):
    build_pipeline(cfg, process_index=0, process_count=1)

  path = _hf_tokenizer(tmp_path / "hf")
  hf = tmp_path / "hf_store"
  m = prepare_store(corpus[1], hf, tokenizer="huggingface", tokenizer_path=path)
  assert m["tokenizer"]["eos_id"] == 1 and m["dtype"] == "uint16"
  assert (hf / "tokenizer" / "tokenizer.json").read_bytes() == open(path, "rb").read()
  cfg = tiny_config
  cfg.data.source, cfg.data.path, cfg.data.tokenizer = "tokens", str(hf), "huggingface"
  cfg.data.sp_model_type, cfg.data.tokenizer_path = "bpe", path
  cfg.model.vocab_size = m["tokenizer"]["vocab_size"]
  first = build_pipeline(cfg, process_index=0, process_count=1).eval_batches()[0]
  assert first.max() < cfg.model.vocab_size and (first > 1).all()  # no <unk>, no eos in a row
  val = np.concatenate([np.load(hf / s["path"]) for s in m["shards"]["val"]])
  assert (val == 1).sum() == m["documents"]["val"] and val[-1] == 1  # eos after each document
  other = _hf_tokenizer(tmp_path / "other")
  with open(other, "a") as f:
    f.write(" ")  # another file: the store was not tokenized with it
  cfg.data.tokenizer_path = other
  with pytest.raises(DataConfigError, match=r"^data.tokenizer_path: .* is not the tokenizer.json"):
    build_pipeline(cfg, process_index=0, process_count=1)


def test_train_from_a_parquet_store(corpus, tmp_path):
  store = tmp_path / "store"
  prepare_store(corpus[2], store, text_field="body")
  out = run_cli(
      "wsdjax.train", "--config", "configs/tiny.py", "--workdir",
      str(tmp_path / "run"), "--config.data.source=tokens", f"--config.data.path={store}",
      "--config.model.vocab_size=256", "--config.model.seq_len=32",
      "--config.train.global_batch_size=8", "--config.schedule.budgets=(12,)",
      "--config.schedule.warmup_steps=2")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "decayed checkpoints:" in out.stdout and "decay-12" in out.stdout


def test_bad_input_is_one_line_and_leaves_no_complete_store(corpus, reference, tmp_path):
  def refused(*args):
    out = cli(*args)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()  # progress lines, then the one-line error
    assert lines[-1].startswith("wsdjax: ") and all(
        line.startswith("prepare: ") for line in lines[:-1]), out.stderr
    return lines[-1][len("wsdjax: "):]

  out = str(tmp_path / "out")
  assert refused("--input", str(tmp_path / "nothing*.jsonl"), "--output", out).startswith(
      "--input: no file matches")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"text": oops}\n')
  assert refused("--input", str(bad), "--output", out).startswith(
      f"--input: {bad} line 2 is not JSON")
  assert not os.path.exists(os.path.join(out, "store.json"))
  assert refused("--input", corpus[2], "--output", str(tmp_path / "o2")).startswith(
      "--text_field: ")  # the Parquet files have no 'text' column
  assert not os.path.exists(tmp_path / "o2")  # found before anything was written
  empty = tmp_path / "empty.jsonl"
  empty.write_text('{"text": ""}\n{"text": "   "}\n')
  assert refused("--input", str(empty), "--output", str(tmp_path / "o3")).startswith(
      "--input: the 1 input files hold no document")
  assert not os.path.exists(tmp_path / "o3" / "store.json")
  afile = tmp_path / "afile"
  afile.write_text("x")
  assert refused("--input", corpus[1], "--output", str(afile)) == (
      f"--output: {afile} is a file; pass a folder (created if absent)")
  before = tree(reference)
  message = refused("--input", corpus[1], "--output", str(reference), "--val_fraction", "0.2",
                    "--shard_tokens", "8000")
  assert message.startswith(f"--output: {reference} already holds a different store "
                            "(val_fraction differ)")
  message = refused("--input", corpus[1], "--output", str(reference), "--tokenizer",
                    "sentencepiece", "--vocab_size", "300", "--shard_tokens", "8000",
                    "--val_fraction", "0.1")
  assert "(tokenizer differ)" in message, message
  assert tree(reference) == before
  os.makedirs(tmp_path / "run" / "checkpoints")
  assert refused("--input", corpus[1], "--output", str(tmp_path / "run")).startswith(
      f"--output: {tmp_path / 'run'} is inside the run {tmp_path / 'run'}")
  os.makedirs(tmp_path / "notes" / "old")
  assert refused("--input", corpus[1], "--output", str(tmp_path / "notes")).startswith(
      f"--output: {tmp_path / 'notes'} holds other files (old, ...)")
  assert refused("--input", corpus[1], "--output", out, "--shard", "2/2").startswith(
      "--shard: 2/2 names no shard")
  assert refused("--input", corpus[1], "--output", out, "--tokenizer", "sentencepiece") == (
      "--vocab_size: must be a positive number of pieces, got 0; e.g. --vocab_size 32000")
