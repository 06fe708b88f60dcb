"""data.source='tokens': token stores read by step (wsdjax/data/tokens_source.py).

The rows of step t must be a pure function of (stores, seed, weights, t): equal on 1, 2 or
8 processes, equal after a resume, windows of the store's token stream visiting each row
once an epoch; mixtures draw each store's share every step; bad stores and settings are one
line."""

import glob
import json
import os

import jax

import numpy as np
import pytest

from conftest import prepare_store, run_cli, write_jsonl_corpus
from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax.config import stored as run_config
from wsdjax.data import DataConfigError, build_pipeline
from wsdjax.data import tokens_source as ts


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
  """Two bytes-tokenized stores of different KJV documents."""
  root = tmp_path_factory.mktemp("stores")
  a = root / "a"
  prepare_store(write_jsonl_corpus(root / "in_a", files=3, docs_per_file=40), a)
  b = root / "b"
  prepare_store(write_jsonl_corpus(root / "in_b", files=2, docs_per_file=30, start=500), b)
  return str(a), str(b)


def tokens_config(tiny_config, path="", mixture=()):
  c = tiny_config
  c.data.source = "tokens"
  c.data.path = path
  c.data.mixture = mixture
  c.model.vocab_size = 256
  return c


def stream(path, split):
  """A split's whole token stream, read with numpy alone, in the manifest's shard order."""
  manifest = json.load(open(os.path.join(path, "store.json")))
  return np.concatenate([np.load(os.path.join(path, s["path"]), mmap_mode="r")
                         for s in manifest["shards"][split]])


def global_batches(cfg, processes, steps, position=None, start=0):
  """The global batches of steps [start, start + steps), assembled from every process."""
  per = []
  for p in range(processes):
    it = build_pipeline(cfg, process_index=p, process_count=processes).train_iterator(
        start, position)
    per.append([next(it) for _ in range(steps)])
    it.close()
  return [np.concatenate([per[p][s] for p in range(processes)]) for s in range(steps)]


def test_feistel_is_a_keyed_permutation():
  for n in (1, 2, 3, 5, 64, 1000, 4097):
    perm = ts.feistel_permutation(np.arange(n), n, (0, 0, 0))
    assert sorted(perm.tolist()) == list(range(n))
  a = ts.feistel_permutation(np.arange(1000), 1000, (0, 0, 0))
  b = ts.feistel_permutation(np.arange(1000), 1000, (1, 0, 0))
  assert (a != b).mean() > 0.9 and (a != np.arange(1000)).mean() > 0.9
  # Pure: the same index gives the same row whatever else is asked with it.
  assert ts.feistel_permutation(np.array([7]), 1000, (0, 0, 0))[0] == a[7]


def test_mixture_counts_every_step_and_over_time():
  weights, batch = [0.7, 0.2, 0.1], 16
  counts = ts._counts(weights, batch, np.arange(2000))
  assert (counts.sum(1) == batch).all()
  for s, w in enumerate(weights):
    assert set(np.unique(counts[:, s])) <= {int(np.floor(w * batch)), int(np.ceil(w * batch))}
    assert abs(counts[:, s].sum() - w * batch * 2000) <= 2
  # A store with less than a row a step still gets its share over time.
  rare = ts._counts([0.98, 0.02], 8, np.arange(5000))[:, 1].sum()
  assert abs(rare - 0.02 * 8 * 5000) <= 2
  history = [[0, [0.7, 0.3]], [500, [0.2, 0.8]]]
  expected = ts._counts([0.7, 0.3], 8, np.arange(500)).sum(0) + ts._counts(
      [0.2, 0.8], 8, np.arange(500, 900)).sum(0)
  np.testing.assert_array_equal(ts.rows_before(history, 8, 900, 2), expected)


@pytest.mark.parametrize("mixed", [False, True])
def test_batches_are_the_same_on_1_2_and_8_processes(tiny_config, stores, mixed):
  cfg = (tokens_config(tiny_config, mixture=((stores[0], 2.0), (stores[1], 1.0))) if mixed
         else tokens_config(tiny_config, stores[0]))
  one = global_batches(cfg, 1, 6)
  for processes in (2, 8):
    for x, y in zip(one, global_batches(cfg, processes, 6)):
      np.testing.assert_array_equal(x, y)
    evals = [build_pipeline(cfg, process_index=p, process_count=processes).eval_batches()
             for p in range(processes)]
    ref = build_pipeline(cfg, process_index=0, process_count=1).eval_batches()
    for b, want in enumerate(ref):
      np.testing.assert_array_equal(np.concatenate([e[b] for e in evals]), want)
  # And a resume from the position saved at step 3 gives steps 3.. again.
  it = build_pipeline(cfg, process_index=0, process_count=1).train_iterator(0)
  for _ in range(3):
    next(it)
  position = json.loads(json.dumps(it.position()))  # as saved with a checkpoint
  it.close()
  for x, y in zip(one[3:], global_batches(cfg, 2, 3, position, start=3)):
    np.testing.assert_array_equal(x, y)


def test_rows_are_windows_of_the_stream_and_each_epoch_visits_every_row_once(tiny_config,
                                                                          stores):
  cfg = tokens_config(tiny_config, stores[0])
  seq, batch = cfg.model.seq_len, cfg.train.global_batch_size
  tokens = stream(stores[0], "train").astype(np.int32)
  rows = (len(tokens) - 1) // seq
  steps = -(-2 * rows // batch)
  it = build_pipeline(cfg, process_index=0, process_count=1).train_iterator(0)
  drawn = np.concatenate([next(it) for _ in range(steps)])
  it.close()
  windows = [tokens[r * seq:r * seq + seq + 1].tobytes() for r in range(rows)]
  epoch_0 = [row.tobytes() for row in drawn[:rows]]
  epoch_1 = [row.tobytes() for row in drawn[rows:2 * rows]]
  assert sorted(epoch_0) == sorted(windows)  # each row once (the text repeats a window)
  assert sorted(epoch_1) == sorted(windows)  # and again in epoch 1,
  assert epoch_0 != epoch_1 and epoch_0 != windows  # in other, shuffled orders
  # Validation rows are windows of the validation split.
  val = stream(stores[0], "val").astype(np.int32)
  val_windows = {val[r * seq:r * seq + seq + 1].tobytes() for r in range((len(val) - 1) // seq)}
  for b in build_pipeline(cfg, process_index=0, process_count=1).eval_batches():
    assert all(row.tobytes() in val_windows for row in b)


def test_mixture_draws_each_store_its_share(tiny_config, stores):
  cfg = tokens_config(tiny_config, mixture=((stores[0], 3.0), (stores[1], 1.0)))
  seq = cfg.model.seq_len
  owner = {}
  for s, path in enumerate(stores):
    tokens = stream(path, "train").astype(np.int32)
    for r in range((len(tokens) - 1) // seq):
      owner[tokens[r * seq:r * seq + seq + 1].tobytes()] = s
  batches = global_batches(cfg, 1, 40)
  from_b = [sum(owner[row.tobytes()] for row in b) for b in batches]
  assert set(from_b) <= {2}  # 8 rows a step, a quarter from store b
  assert build_pipeline(cfg, process_index=0, process_count=1).fingerprint()["stores"] == [
      json.load(open(os.path.join(p, "store.json")))["id"] for p in stores]


def test_changed_weights_act_from_the_resume_step_and_travel_with_the_position(tiny_config,
                                                                             stores):
  old = tokens_config(tiny_config, mixture=((stores[0], 1.0), (stores[1], 1.0)))
  it = build_pipeline(old, process_index=0, process_count=1).train_iterator(0)
  before = [next(it) for _ in range(10)]
  at_5 = None
  it.close()
  it = build_pipeline(old, process_index=0, process_count=1).train_iterator(0)
  for _ in range(5):
    next(it)
  at_5 = it.position()
  it.close()
  new = config_lib.base_config()
  new.update_from_flattened_dict(config_lib.flatten(old))
  new.data.mixture = ((stores[0], 3.0), (stores[1], 1.0))
  pipe = build_pipeline(new, process_index=0, process_count=1)
  it = pipe.train_iterator(5, at_5)
  after = [next(it) for _ in range(5)]
  position = it.position()
  it.close()
  assert position["mixture"] == [[0, [1.0, 1.0]], [5, [3.0, 1.0]]]
  assert not any(np.array_equal(x, y) for x, y in zip(before[5:], after))
  # Resuming later from a state saved after the change keeps its history; the steps
  # before the change read what they read under the old weights.
  it = pipe.train_iterator(10, position)
  later = next(it)
  it.close()
  straight = pipe.train_iterator(5, at_5)
  again = [next(straight) for _ in range(6)]
  straight.close()
  np.testing.assert_array_equal(later, again[5])
  # The resume rule: weights may change, the stores may not.
  assert run_config.resume_conflicts(old, new) == []
  assert "data.mixture" in run_config.future_changes(old, new)
  other = config_lib.base_config()
  other.update_from_flattened_dict(config_lib.flatten(old))
  other.data.mixture = ((stores[1], 1.0), (stores[0], 1.0))
  assert any(c.startswith("data.mixture stores") for c in run_config.resume_conflicts(old, other))


def test_bad_stores_and_settings_are_one_line(tiny_config, stores, tmp_path):
  def error(cfg):
    with pytest.raises((DataConfigError, config_lib.ConfigError)) as e:
      config_lib.validate(cfg)
      build_pipeline(cfg, process_index=0, process_count=1)
    assert "\n" not in str(e.value)
    return str(e.value)

  cfg = tokens_config(tiny_config, stores[0])
  cfg.model.vocab_size = 512
  assert error(cfg).startswith("model.vocab_size: is 512 but the bytes tokenizer has 256 tokens")
  cfg = tokens_config(tiny_config, stores[0])
  cfg.data.tokenizer = "sentencepiece"
  assert error(cfg).startswith("data.tokenizer: is 'sentencepiece' but ")
  assert error(tokens_config(tiny_config)).startswith("data.path: empty but data.source='tokens'")
  for weights, words in (((1.0, -1.0), "weights must be finite and >= 0"),
                         ((0.0, 0.0), "weights sum to 0")):
    cfg = tokens_config(tiny_config, mixture=tuple(zip(stores, weights)))
    assert error(cfg).startswith(f"data.mixture: {words}")
  cfg = tokens_config(tiny_config, stores[0], mixture=((stores[1], 1.0),))
  assert error(cfg).startswith("data.path: both data.path and data.mixture are set")
  cfg = tokens_config(tiny_config, str(tmp_path / "nothing"))
  assert error(cfg).startswith("data.path: ") and "is not a complete token store" in error(cfg)
  cfg = tokens_config(tiny_config, stores[0])
  cfg.model.seq_len = 10**6
  assert error(cfg).startswith("model.seq_len: is 1000000 but the training split of ")
  # A truncated shard: named, and the store is not read.
  broken = tmp_path / "broken"
  os.system(f"cp -r {stores[0]} {broken}")
  shard = sorted(glob.glob(str(broken / "train" / "*.npy")))[-1]
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) - 10)
  message = error(tokens_config(tiny_config, str(broken)))
  assert message.startswith(f"data.path: {broken}/train/") and "truncated" in message


def _cli(*args):
  out = run_cli(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_a_decay_after_the_fact_equals_the_planned_one_and_weights_change_on_resume(
    stores, tmp_path):
  """On a mixture of stores: a WSD decay planned at B=16 (fork 13) and one made later from
  a saved main@13 of a constant-LR run read the same rows, so they are the same state. Then
  the weights change on resume: recorded at the state the run goes on from, carried in the
  data position of every later save."""
  data = ["--config.data.source=tokens", "--config.model.vocab_size=256",
          f"--config.data.mixture=(('{stores[0]}', 3.0), ('{stores[1]}', 1.0))",
          "--config.model.seq_len=32", "--config.train.global_batch_size=8"]
  train = ["wsdjax.train", "--config", "configs/tiny.py", *data]
  _cli(*train, "--workdir", str(tmp_path / "planned"), "--config.schedule.name=wsd",
       "--config.schedule.budgets=(16,)", "--config.schedule.decay_steps=3")
  later = tmp_path / "later"
  _cli(*train, "--workdir", str(later), "--config.schedule.name=constant",
       "--config.schedule.budgets=(20,)", "--config.checkpoint.every=13")
  _cli("wsdjax.branch", "--workdir", str(later), "--from-step", "13", "--decay-steps", "3")
  for x, y in zip(jax.tree.leaves(ckpt.restore(str(tmp_path / "planned"), branch="decay-16")),
                  jax.tree.leaves(ckpt.restore(str(later), branch="decay-16"))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  out = _cli(*train[:3], "--workdir", str(later), *data[:2],
             f"--config.data.mixture=(('{stores[0]}', 1.0), ('{stores[1]}', 1.0))", *data[3:],
             "--config.schedule.name=constant", "--config.schedule.budgets=(20, 30)",
             "--config.checkpoint.every=13")
  assert "config change from main@20: data.mixture" in out, out
  tree = ckpt.CheckpointTree(later, read_only=True)
  assert [c["changes"]["data.mixture"][1] for c in tree.config_changes()] == [
      [[stores[0], 1.0], [stores[1], 1.0]]]
  position = tree.read_meta(ckpt.StateRef("main", 30))["data_positions"][0]
  assert position == {"step": 30, "mixture": [[0, [3.0, 1.0]], [20, [1.0, 1.0]]]}
  assert tree.read_meta(ckpt.StateRef("main", 20))["data_positions"][0]["mixture"] == [
      [0, [3.0, 1.0]]]


def test_a_large_vocabulary_store_is_uint32_and_reads_across_shards(tmp_path):
  """Ids past 65,535 are stored as uint32; windows spanning shard ends read whole."""
  from wsdjax.data import packing, token_store
  assert packing.token_dtype(65536) == np.uint16 and packing.token_dtype(65537) == np.uint32
  kv = token_store.open_kvstore(str(tmp_path))
  rng = np.random.default_rng(0)
  parts = [rng.integers(0, 100_000, n).astype(np.uint32) for n in (5, 17, 3, 40)]
  shards = {"train": [], "val": []}
  for i, part in enumerate(parts):
    raw, offset = token_store.npy_bytes(part)
    kv.write(f"train/{i:05d}.npy", raw).result()
    shards["train"].append({"path": f"train/{i:05d}.npy", "tokens": len(part), "offset": offset})
  shards["val"] = shards["train"][:1]
  tokenizer = {"kind": "huggingface", "vocab_size": 100_000, "eos_id": 1, "sha256": "x"}
  token_store.write_json(kv, "store.json", {
      "format": token_store.FORMAT, "version": token_store.VERSION, "dtype": "uint32",
      "tokenizer": tokenizer, "shards": shards, "id": token_store.store_id(tokenizer, shards)})
  split = token_store.TokenStore(str(tmp_path)).split("train")
  whole = np.concatenate(parts).astype(np.int32)
  starts = np.array([0, 3, 4, 20, 21, 24, 30])
  np.testing.assert_array_equal(split.read(starts, 35),
                                np.stack([whole[s:s + 35] for s in starts]))
  with pytest.raises(IndexError):
    split.read(np.array([len(whole) - 3]), 4)
