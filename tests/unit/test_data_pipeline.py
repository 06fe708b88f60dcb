"""Step-indexed pipelines (bundled, text, bigram): exact resume, process shards, the fixed
validation set, the prefetching iterator, the bigram optimum, and `to_global`."""

import json
import time

import jax
import ml_collections
import numpy as np
import pytest

from wsdjax.data import DataConfigError, build_pipeline, to_global
from wsdjax.data import bigram as bigram_lib
from wsdjax.data import packing
from wsdjax.data.iterator import BatchIterator


def _config(**data):
  """The data-relevant fields of the run config (see configs/default.py)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(vocab_size=256, seq_len=64))
  c.train = ml_collections.ConfigDict(dict(global_batch_size=8, eval_batches=3))
  c.data = ml_collections.ConfigDict(dict(
      source="bundled", path="", tfds_name="", tfds_data_dir="", tfds_train_split="train",
      tfds_eval_split="test", text_feature="text", val_fraction=0.02, tokenizer="bytes",
      tokenizer_path="", sp_model_type="bpe", bigram_seed=1234, bigram_alpha=0.1,
      prefetch=2))
  c.data.update(data)
  return c


def _take(pipe, start, n, position=None):
  it = pipe.train_iterator(start, position)
  batches = [next(it) for _ in range(n)]
  pos = it.position()
  it.close()
  return batches, pos


def _build(config, p=0, count=1):
  return build_pipeline(config, process_index=p, process_count=count)


@pytest.mark.parametrize("source", ["bundled", "bigram"])
def test_resume_from_any_step_equals_continuing(source):
  pipe = _build(_config(source=source))
  straight, pos = _take(pipe, 0, 8)
  assert pos == {"step": 8}
  resumed, pos = _take(_build(_config(source=source)), 5, 3)
  assert pos == {"step": 8}
  for a, b in zip(straight[5:], resumed):
    np.testing.assert_array_equal(a, b)
  assert straight[0].shape == (8, 65) and straight[0].dtype == np.int32
  assert not np.array_equal(straight[0], straight[1])
  other_seed = _config(source=source)
  other_seed.seed = 1
  assert not np.array_equal(_take(_build(other_seed), 0, 1)[0][0], straight[0])


@pytest.mark.parametrize("source", ["bundled", "bigram"])
def test_two_process_shards_make_the_global_batch(source):
  single = _build(_config(source=source))
  shards = [_build(_config(source=source), p, 2) for p in range(2)]
  assert [s.local_batch_size for s in shards] == [4, 4]
  whole, _ = _take(single, 3, 2)
  parts = [_take(s, 3, 2)[0] for s in shards]
  for step in range(2):
    np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), whole[step])
    rows0 = {r.tobytes() for r in parts[0][step]}
    assert rows0.isdisjoint(r.tobytes() for r in parts[1][step])
  evals = [s.eval_batches() for s in shards]
  for b, full in enumerate(single.eval_batches()):
    np.testing.assert_array_equal(np.concatenate([evals[0][b], evals[1][b]]), full)


def test_epochs_visit_every_row_once_in_a_fresh_order(tmp_path):
  docs = [" ".join(f"d{i}w{j}" for j in range(100)) for i in range(8)]
  (tmp_path / "c.txt").write_text("\n\n".join(docs))
  pipe = _build(_config(source="text", path=str(tmp_path / "c.txt"), val_fraction=0.3))
  n = pipe.fingerprint()["train_rows"]
  assert 8 < n < 100  # several epochs within a few steps
  rows = np.concatenate(_take(pipe, 0, -(-3 * n // 8))[0])
  epochs = [rows[e * n:(e + 1) * n] for e in range(3)]
  row_sets = [{r.tobytes() for r in epoch} for epoch in epochs]
  assert all(len(s) == n for s in row_sets)  # every (distinct) row once per epoch
  assert row_sets[0] == row_sets[1] == row_sets[2]
  assert not np.array_equal(epochs[0], epochs[1])  # in a fresh order
  shuffle = packing.EpochShuffle(n, seed=0)
  assert sorted(shuffle.permutation(0)) == list(range(n))
  # Validation: the packed held-out rows in order, wrapping when eval needs more.
  c = _config(source="text", path=str(tmp_path / "c.txt"), val_fraction=0.3)
  c.train.eval_batches = 20
  m = pipe.fingerprint()["val_rows"]
  val = np.concatenate(_build(c).eval_batches())
  assert m < len(val) == 160
  np.testing.assert_array_equal(val[m:2 * m], val[:m])
  assert all(val[i, -1] == val[i + 1, 0] for i in range(m - 1))


def test_text_source_packs_documents_with_eos(tmp_path):
  docs = [f"document {i}: " + "lorem ipsum " * (i % 5 + 1) for i in range(300)]
  (tmp_path / "a.txt").write_text("\n\n".join(docs[:150]))
  (tmp_path / "b.txt").write_text("\n\n".join(docs[150:]))
  pipe = _build(_config(source="text", path=str(tmp_path / "*.txt"), val_fraction=0.1))
  fp = pipe.fingerprint()
  assert fp["documents"] == 300 and fp["path"] == str(tmp_path / "*.txt")
  seen = set()
  for batch in pipe.eval_batches() + _take(pipe, 0, 20)[0]:
    for row in batch:
      text = bytes(row.astype(np.uint8)).decode()
      seen.update(t.strip() for t in text.split("\x00")[1:-1])
  assert seen and seen <= {d.strip() for d in docs}  # whole documents between EOS
  # Validation rows come from held-out documents only.
  val_text = "".join(bytes(r.astype(np.uint8)).decode() for b in pipe.eval_batches() for r in b)
  train_text = "".join(bytes(r.astype(np.uint8)).decode() for r in _take(pipe, 0, 40)[0][0])
  val_docs = {t.strip() for t in val_text.split("\x00")[1:-1]}
  assert val_docs and val_docs.isdisjoint({t.strip() for t in train_text.split("\x00")[1:-1]})


def test_fixed_validation_set():
  pipe = _build(_config())
  evals = pipe.eval_batches()
  assert len(evals) == 3 and all(b.shape == (8, 65) for b in evals)
  other = _config()
  other.seed = 7  # data order changes, the validation set does not
  for a, b in zip(evals, _build(other).eval_batches()):
    np.testing.assert_array_equal(a, b)
  # In order: consecutive packed rows overlap by one token.
  assert evals[0][0, -1] == evals[0][1, 0]
  big = _build(_config(source="bigram"))
  train = _take(big, 0, 1)[0][0]
  assert not np.array_equal(big.eval_batches()[0], train)
  again = _build(_config(source="bigram")).eval_batches()
  np.testing.assert_array_equal(big.eval_batches()[2], again[2])


def test_bigram_entropy_rate_matches_monte_carlo():
  c = _config(source="bigram")
  c.model.vocab_size, c.model.seq_len, c.train.global_batch_size = 64, 128, 256
  pipe = _build(c)
  assert pipe.tokenizer is None and pipe.vocab_size == 64
  chain = bigram_lib.BigramChain(64, 0.1, 1234)
  assert pipe.entropy_rate == pytest.approx(chain.entropy_rate, rel=1e-12)
  np.testing.assert_allclose(chain.stationary @ chain.transition, chain.stationary, atol=1e-14)
  rows = np.concatenate(_take(pipe, 0, 4)[0])  # 1024 rows x 128 transitions
  log_p = np.log(chain.transition[rows[:, :-1], rows[:, 1:]])
  assert -log_p.mean() == pytest.approx(pipe.entropy_rate, rel=0.01)
  # The first token of a row is drawn from the stationary distribution.
  first = chain.rows(0, np.arange(10_000), 1)[:, 0]
  assert np.abs(np.bincount(first, minlength=64) / 1e4 - chain.stationary).sum() < 0.1
  assert 0 < pipe.entropy_rate < np.log(64)
  fp = pipe.fingerprint()
  assert fp["entropy_rate"] == pipe.entropy_rate and fp["bigram_alpha"] == 0.1


def test_bigram_rows_are_a_pure_function_of_their_index():
  chain = bigram_lib.BigramChain(256, 0.1, 1234)
  a = chain.rows(0, np.array([5, 6, 7]), 33)
  np.testing.assert_array_equal(a[1:], chain.rows(0, np.array([6, 7]), 33))
  np.testing.assert_array_equal(a, bigram_lib.BigramChain(256, 0.1, 1234).rows(0, [5, 6, 7], 33))
  assert not np.array_equal(a, chain.rows(1, [5, 6, 7], 33))
  assert not np.array_equal(a, bigram_lib.BigramChain(256, 0.1, 99).rows(0, [5, 6, 7], 33))
  # Every sampled transition has positive probability.
  assert (chain.transition[a[:, :-1], a[:, 1:]] > 0).all()


def test_iterator_prefetches_reports_wait_and_position():
  def slow():
    for i in range(4):
      time.sleep(0.05)
      yield np.full((2, 3), i, np.int32), {"step": i + 1}

  it = BatchIterator(slow(), {"step": 0}, depth=2)
  assert it.position() == {"step": 0}
  assert next(it)[0, 0] == 0 and it.last_wait_s > 0.02 and it.position() == {"step": 1}
  time.sleep(0.2)  # the thread fills the queue meanwhile
  assert next(it)[0, 0] == 1 and it.last_wait_s < 0.02 and it.position() == {"step": 2}
  assert [b[0, 0] for b in it] == [2, 3] and it.position() == {"step": 4}
  it.close()

  def broken():
    yield np.zeros((1, 1), np.int32), {"step": 1}
    raise RuntimeError("source failed")
  for depth in (0, 2):
    it = BatchIterator(broken(), {"step": 0}, depth=depth)
    next(it)
    with pytest.raises(RuntimeError, match="source failed"):
      next(it)
    it.close()


def test_unprefetched_pipeline_and_fingerprint():
  pipe = _build(_config(prefetch=0))
  batches, pos = _take(pipe, 2, 2)
  np.testing.assert_array_equal(batches[0], _take(_build(_config()), 2, 1)[0][0])
  fp = pipe.fingerprint()
  assert json.loads(json.dumps(fp)) == fp
  assert fp["source"] == "bundled" and fp["tokenizer"] == {"kind": "bytes"}
  assert fp["seq_len"] == 64 and fp["global_batch_size"] == 8 and fp["seed"] == 0
  other = _config()
  other.model.seq_len = 32
  assert _build(other).fingerprint() != fp


def test_config_errors():
  with pytest.raises(DataConfigError, match=r"^train\.global_batch_size: is 8, not a multiple"):
    _build(_config(), 0, 3)
  with pytest.raises(DataConfigError, match=r"^data\.source: is 'nope'"):
    _build(_config(source="nope"))
  with pytest.raises(DataConfigError, match=r"^data\.path: is empty"):
    _build(_config(source="text"))


def test_to_global_single_device():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
  local = _take(_build(_config()), 0, 1)[0][0]
  arr = to_global(local, sharding)
  assert isinstance(arr, jax.Array) and arr.shape == local.shape and arr.dtype == np.int32
  assert arr.sharding == sharding
  np.testing.assert_array_equal(np.asarray(arr), local)
