"""How CheckpointTree stores a state's arrays (`checkpoint.compression`): zstd or raw, each
read back by a tree of either setting, and saves written before the setting existed."""

import io

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import one_device_mesh

from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax import trainer as trainer_lib
from wsdjax.plan import StateRef


def _state():
  """~1 MB that zstd shrinks ~100x (a constant), and a little that it cannot."""
  rng = np.random.default_rng(0)
  return {"flat": jnp.full((512, 512), 0.25, jnp.float32),
          "noise": jnp.asarray(rng.standard_normal((64, 64), np.float32)),
          "step": jnp.int32(3)}


def _bytes_on_disk(path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _save(tree, step, state):
  tree.save(StateRef("main", step), state, {"branch": "main", "step": step})
  assert [e["step"] for e in tree.wait()] == [step]


def _assert_same(restored, state):
  for key in state:
    np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(state[key]))


@pytest.mark.parametrize("backend, priority, expected", [
    ("cpu", "normal", "none"), ("cpu", "idle", "zstd"), ("gpu", "normal", "zstd"),
    ("tpu", "normal", "zstd"), ("tpu", "idle", "zstd")])
def test_auto_compression_is_raw_only_where_the_write_takes_cpu_from_the_step(
    backend, priority, expected):
  assert ckpt.resolve_compression("auto", backend, priority) == expected
  assert ckpt.resolve_compression("zstd", "cpu") == "zstd"
  assert ckpt.resolve_compression("none", "tpu") == "none"


def test_an_unknown_compression_is_refused(tmp_path):
  with pytest.raises(ValueError, match="compression"):
    ckpt.resolve_compression("lz4", "cpu")
  with pytest.raises(ValueError, match="compression"):
    ckpt.CheckpointTree(tmp_path, compression="auto")  # resolved before the tree


def test_zstd_saves_are_compressed_raw_ones_are_not_and_either_tree_reads_both(tmp_path):
  state = _state()
  raw_bytes = sum(np.asarray(v).nbytes for v in state.values())
  zstd_tree = ckpt.CheckpointTree(tmp_path, compression="zstd")
  _save(zstd_tree, 1, state)
  zstd_tree.close()
  raw_tree = ckpt.CheckpointTree(tmp_path, compression="none")
  _save(raw_tree, 2, state)
  steps = tmp_path / "checkpoints" / "main"
  assert _bytes_on_disk(steps / "2" / "state") > raw_bytes
  assert _bytes_on_disk(steps / "1" / "state") < raw_bytes / 4
  for step in (1, 2):  # the raw tree restores the zstd save too
    _assert_same(raw_tree.restore(StateRef("main", step), state)[0], state)
  raw_tree.close()
  again = ckpt.CheckpointTree(tmp_path, compression="zstd", read_only=True)
  target = {k: np.zeros(v.shape, v.dtype) for k, v in state.items()}  # host arrays
  restored, meta = again.restore(StateRef("main", 2), target)
  _assert_same(restored, state)
  assert isinstance(restored["flat"], np.ndarray) and meta["entry"]["step"] == 2


def test_saves_written_with_orbaxs_standard_handler_still_restore(tmp_path):
  """Before `checkpoint.compression`, the state item was written with StandardSave."""
  state = _state()
  root = ckpt.checkpoint_dir(tmp_path)
  old = ocp.CheckpointManager(root / "main", item_names=("state", "meta"))
  meta = {"entry": {"branch": "main", "step": 5}}
  old.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)))
  old.wait_until_finished()
  old.close()
  tree = ckpt.CheckpointTree(tmp_path, compression="none")
  assert [e["step"] for e in tree.manifest()] == [5]
  restored, got = tree.restore(StateRef("main", 5), state)
  _assert_same(restored, state)
  assert got == meta
  tree.close()


def test_the_trainer_resolves_auto_for_its_backend_and_write_priority(tiny_config, tmp_path):
  config_lib.validate(tiny_config, 1)
  assert tiny_config.checkpoint.compression == "auto"
  for priority, expected in (("normal", "none"), ("idle", "zstd")):  # on the CPU backend
    tiny_config.checkpoint.write_priority = priority
    trainer = trainer_lib.Trainer(tiny_config, tmp_path, mesh=one_device_mesh(),
                                  stream=io.StringIO())
    try:
      assert trainer.tree.compression == expected
    finally:
      trainer.writer.close()
      trainer.tree.close()
