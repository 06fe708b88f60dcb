"""Tokenizers: bytes round-trip, SentencePiece trained then cached, HF tokenizer.json,
and the one-line vocab-size mismatch error."""

import ml_collections
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from wsdjax.data import DataConfigError, build_pipeline
from wsdjax.data import kjv
from wsdjax.data import tokenizers as tokenizers_lib


def _config(**data):
  """The data-relevant fields of the run config (see configs/default.py)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(vocab_size=256, seq_len=64))
  c.train = ml_collections.ConfigDict(dict(global_batch_size=8, eval_batches=2))
  c.data = ml_collections.ConfigDict(dict(
      source="bundled", path="", tfds_name="", tfds_data_dir="", tfds_train_split="train",
      tfds_eval_split="test", text_feature="text", val_fraction=0.05, tokenizer="bytes",
      tokenizer_path="", sp_model_type="bpe", bigram_seed=1234, bigram_alpha=0.1,
      prefetch=2))
  c.data.update(data)
  return c


@pytest.fixture(scope="module")
def corpus_glob(tmp_path_factory):
  """~250 KB of English in three text files, one document per paragraph."""
  root = tmp_path_factory.mktemp("corpus")
  docs = kjv.kjv_documents()[:600]
  for i in range(3):
    (root / f"part{i}.txt").write_text("\n\n".join(docs[i::3]) + "\n")
  return str(root / "part*.txt")


def test_bytes_round_trip():
  tok = tokenizers_lib.BytesTokenizer()
  text = "In the beginning — ünïcode ✓ and\nnewlines"
  ids = tok.encode(text)
  assert tok.vocab_size == 256 and tok.eos_id == 0
  assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
  assert tok.encode("a\x00b") == [97, 98]  # NUL is the EOS id, so it is dropped
  assert tok.decode([97, 0, 98]) == "ab"
  assert [a.tolist() for a in tok.encode_batch(["ab", "\x00c"])] == [[97, 98], [99]]


def test_vocab_mismatch_is_one_line_error():
  c = _config()
  c.model.vocab_size = 512
  with pytest.raises(DataConfigError) as e:
    build_pipeline(c, process_index=0, process_count=1)
  assert str(e.value) == ("model.vocab_size: is 512 but the bytes tokenizer has 256 tokens; "
                          "set --config.model.vocab_size=256")
  assert isinstance(e.value, ValueError)


def test_sentencepiece_trained_once_then_cached(tmp_path, corpus_glob, monkeypatch):
  c = _config(source="text", path=corpus_glob, tokenizer="sentencepiece")
  c.model.vocab_size = 400
  first = build_pipeline(c, workdir=str(tmp_path), process_index=0, process_count=1)
  cached = tmp_path / "tokenizer" / "sentencepiece_bpe_400.model"
  assert cached.is_file()
  tok = first.tokenizer
  assert first.vocab_size == tok.vocab_size == 400 and tok.eos_id == 1
  text = "And God said, Let there be light: and there was light."
  assert tok.decode(tok.encode(text)) == text
  assert len(tok.encode(text)) < len(text) // 2  # it learned merges

  def no_training(*args, **kwargs):
    raise AssertionError("the cached model should have been reused")
  monkeypatch.setattr(tokenizers_lib, "train_sentencepiece", no_training)
  second = build_pipeline(c, workdir=str(tmp_path), process_index=0, process_count=1)
  assert second.fingerprint() == first.fingerprint()
  assert first.fingerprint()["tokenizer"]["kind"] == "sentencepiece"
  batch = next(iter(second.train_iterator(0)))
  assert batch.shape == (8, 65) and batch.max() < 400
  np.testing.assert_array_equal(batch, next(iter(first.train_iterator(0))))


def _save_hf_tokenizer(path, specials):
  """Trains a tiny byte-level BPE tokenizer.json with `specials` and saves it at `path`."""
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(list(kjv.kjv_documents()[:200]), trainer)
  tok.save(str(path))
  return tok


def test_huggingface_tokenizer_json(tmp_path, corpus_glob):
  path = tmp_path / "tokenizer.json"
  hf = _save_hf_tokenizer(path, ["<unk>", "<|endoftext|>"])
  c = _config(source="text", path=corpus_glob, tokenizer="huggingface",
              tokenizer_path=str(path))
  c.model.vocab_size = hf.get_vocab_size()
  pipe = build_pipeline(c, process_index=0, process_count=1)
  tok = pipe.tokenizer
  assert tok.vocab_size == hf.get_vocab_size() and tok.eos_id == hf.token_to_id("<|endoftext|>")
  text = "Thou shalt love thy neighbour as thyself."
  assert tok.decode(tok.encode(text)) == text
  it = pipe.train_iterator(0)
  batches = np.stack([next(it) for _ in range(20)])
  it.close()
  assert batches.max() < tok.vocab_size and (batches == tok.eos_id).any()

  c.model.vocab_size = 999
  with pytest.raises(DataConfigError, match=(
      rf"^model\.vocab_size: is 999 but the huggingface tokenizer has {tok.vocab_size} "
      rf"tokens; set --config\.model\.vocab_size={tok.vocab_size}$")):
    build_pipeline(c, process_index=0, process_count=1)


def test_huggingface_without_eos_token_is_an_error(tmp_path, corpus_glob):
  path = tmp_path / "tokenizer.json"
  _save_hf_tokenizer(path, ["<unk>"])
  c = _config(source="text", path=corpus_glob, tokenizer="huggingface",
              tokenizer_path=str(path))
  with pytest.raises(DataConfigError, match=r"^data\.tokenizer_path: .* none of the eos"):
    build_pipeline(c, process_index=0, process_count=1)
