"""The tfds source: a tiny array_record dataset built here, read through tfds.data_source
and grain; exact position restore; per-process record shares; the fixed eval rows."""

import json

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from wsdjax.data import build_pipeline
from wsdjax.data import tfds_source

_TRAIN_RECORDS = 60


class WsdjaxTinyText(tfds.core.GeneratorBasedBuilder):
  """Records `rec{i:03d}:` + a few words, with a `text` feature."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples("rec", _TRAIN_RECORDS),
            "test": self._generate_examples("val", 12)}

  def _generate_examples(self, prefix, n):
    for i in range(n):
      yield i, {"text": f"{prefix}{i:03d}: " + "grain " * (i % 6 + 1)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  WsdjaxTinyText(data_dir=path, file_format="array_record").download_and_prepare()
  return path


def _config(data_dir, **data):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(vocab_size=256, seq_len=32))
  c.train = ml_collections.ConfigDict(dict(global_batch_size=4, eval_batches=2))
  c.data = ml_collections.ConfigDict(dict(
      source="tfds", path="", tfds_name="wsdjax_tiny_text", tfds_data_dir=data_dir,
      tfds_train_split="train", tfds_eval_split="test", text_feature="text",
      val_fraction=0.02, tokenizer="bytes", tokenizer_path="", sp_model_type="bpe",
      bigram_seed=1234, bigram_alpha=0.1, prefetch=2))
  c.data.update(data)
  return c


def _take(pipe, start, n, position=None):
  """n batches from `start`, and the JSON round-tripped position after each."""
  it = pipe.train_iterator(start, position)
  batches, positions = [], []
  for _ in range(n):
    batches.append(next(it))
    positions.append(json.loads(json.dumps(it.position())))
  it.close()
  return batches, positions


def _text(rows):
  return "".join(bytes(r.astype(np.uint8)[:-1]).decode() for r in rows)


def _records(rows):
  """Ids of the records whose start appears in `rows`."""
  return {t[:6] for t in _text(rows).split("\x00") if t.startswith(("rec", "val"))}


def test_reads_through_tfds_data_source(data_dir, monkeypatch):
  calls = []
  real = tfds.data_source

  def spy(name, **kwargs):
    calls.append((name, kwargs["split"]))
    return real(name, **kwargs)
  monkeypatch.setattr(tfds, "data_source", spy)
  pipe = build_pipeline(_config(data_dir), process_index=0, process_count=1)
  assert calls == [("wsdjax_tiny_text", "train"), ("wsdjax_tiny_text", "test")]
  batches, positions = _take(pipe, 0, 3)
  assert batches[0].shape == (4, 33) and batches[0].dtype == np.int32
  assert "grain grain" in _text(batches[0]) and _records(batches[0])
  assert positions[-1]["step"] == 3 and positions[-1]["epoch"] == 0
  fp = pipe.fingerprint()
  assert fp["source"] == "tfds" and fp["tfds_name"] == "wsdjax_tiny_text"
  assert fp["train_records"] == _TRAIN_RECORDS and json.loads(json.dumps(fp)) == fp


def test_position_restore_equals_continuation(data_dir):
  pipe = build_pipeline(_config(data_dir), process_index=0, process_count=1)
  batches, positions = _take(pipe, 0, 40)
  assert positions[-1]["epoch"] >= 1  # the run crosses an epoch boundary
  for k in (1, 7, 29):
    again, _ = _take(build_pipeline(_config(data_dir), process_index=0, process_count=1),
                     k + 1, 10, positions[k])
    for a, b in zip(batches[k + 1:k + 11], again):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="position"):
    pipe.train_iterator(5)
  with pytest.raises(ValueError, match="for step 8"):
    pipe.train_iterator(3, positions[7])
  # Every record is read once per epoch, in a fresh order each epoch.
  epoch0 = [r for b, p in zip(batches, positions) if p["epoch"] == 0 for r in b]
  assert _records(epoch0) <= {f"rec{i:03d}" for i in range(_TRAIN_RECORDS)}
  assert len(_records(epoch0)) > _TRAIN_RECORDS - 3


def test_processes_read_disjoint_shares(data_dir):
  shards = [build_pipeline(_config(data_dir), process_index=p, process_count=2)
            for p in range(2)]
  assert [s.local_batch_size for s in shards] == [2, 2]
  seen = []
  for s in shards:
    batches, positions = _take(s, 0, 12)
    assert batches[0].shape == (2, 33)
    assert positions[-1]["process"] == [shards.index(s), 2]
    seen.append(_records(np.concatenate(batches)))
  assert seen[0] and seen[1] and seen[0].isdisjoint(seen[1])
  _, pos0 = _take(shards[0], 0, 1)
  with pytest.raises(ValueError, match="each process must restore its own position"):
    next(shards[1].train_iterator(1, pos0[0]))
  assert shards[0].fingerprint()["process_count"] == 2


def test_eval_rows_are_the_first_rows_of_the_eval_split(data_dir):
  pipe = build_pipeline(_config(data_dir), process_index=0, process_count=1)
  evals = pipe.eval_batches()
  assert len(evals) == 2 and evals[0].shape == (4, 33)
  source = tfds.data_source("wsdjax_tiny_text", split="test", data_dir=data_dir)
  stream = "".join(source[i]["text"].decode() + "\x00" for i in range(len(source)))
  assert len(source) == 12 and len(stream) > 8 * 32  # no wrap-around needed
  expected = [stream[r * 32:r * 32 + 33] for r in range(8)]
  assert [bytes(r.astype(np.uint8)).decode() for b in evals for r in b] == expected
  shards = [build_pipeline(_config(data_dir), process_index=p, process_count=2).eval_batches()
            for p in range(2)]
  for b in range(2):
    np.testing.assert_array_equal(np.concatenate([shards[0][b], shards[1][b]]), evals[b])
  # A short eval split is cycled: more batches extend the same stream.
  longer = _config(data_dir)
  longer.train.eval_batches = 6
  rows = np.concatenate(build_pipeline(longer, process_index=0, process_count=1).eval_batches())
  assert rows.shape == (24, 33) and len(stream) < 24 * 32
  np.testing.assert_array_equal(rows[:8], np.concatenate(evals))


def test_record_text_accepts_bytes_str_and_arrays():
  assert tfds_source.record_text({"t": b"caf\xc3\xa9"}, "t") == "café"
  assert tfds_source.record_text({"t": "café"}, "t") == "café"
  assert tfds_source.record_text({"t": np.array(b"x", dtype=object)}, "t") == "x"
  with pytest.raises(ValueError, match=r"^data\.text_feature: is 'x'"):
    tfds_source.record_text({"t": b""}, "x")
