"""How CheckpointTree stores a state's arrays (`checkpoint.writer`, `checkpoint.compression`):
Orbax's zstd or raw chunks, or the direct-I/O writer's raw arrays, each read back by a tree
of any setting, and saves written before the settings existed."""

import io
import os

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
  assert tiny_config.checkpoint.compression == "auto" and tiny_config.checkpoint.writer == "auto"
  for priority, compression, writer, expected in (  # on the CPU backend, a local workdir
      ("normal", "auto", "direct", "none"), ("idle", "auto", "direct", "none"),
      ("normal", "zstd", "orbax", "zstd")):
    tiny_config.checkpoint.write_priority = priority
    tiny_config.checkpoint.compression = compression
    trainer = trainer_lib.Trainer(tiny_config, tmp_path / priority / compression,
                                  mesh=one_device_mesh(), stream=io.StringIO())
    try:
      assert (trainer.tree.writer, trainer.tree.compression) == (writer, expected)
    finally:
      trainer.writer.close()
      trainer.tree.close()


@pytest.mark.parametrize("backend, compression, workdir, expected", [
    ("cpu", "auto", "/runs/a", "direct"), ("cpu", "none", "runs/a", "direct"),
    ("cpu", "zstd", "/runs/a", "orbax"), ("cpu", "auto", "gs://bucket/a", "orbax"),
    ("gpu", "auto", "/runs/a", "orbax"), ("tpu", "none", "/runs/a", "orbax")])
def test_auto_writer_is_direct_only_for_raw_arrays_on_a_local_cpu_run(
    backend, compression, workdir, expected):
  assert ckpt.resolve_writer("auto", backend, compression, workdir) == expected
  assert ckpt.resolve_writer("orbax", backend, compression, workdir) == "orbax"


def test_a_direct_writer_that_cannot_work_is_refused(tmp_path):
  with pytest.raises(ValueError, match="writer: 'tensorstore'"):
    ckpt.resolve_writer("tensorstore", "cpu", "auto", tmp_path)
  with pytest.raises(ValueError, match="compression to 'auto' or 'none'"):
    ckpt.resolve_writer("direct", "cpu", "zstd", tmp_path)
  with pytest.raises(ckpt.CheckpointError, match="needs a local workdir"):
    ckpt.resolve_writer("direct", "gpu", "auto", "gs://bucket/run")
  with pytest.raises(ValueError, match="writer"):
    ckpt.CheckpointTree(tmp_path, writer="auto")  # resolved before the tree


def test_a_config_asking_the_direct_writer_for_zstd_is_refused(tiny_config):
  tiny_config.checkpoint.writer = "direct"
  tiny_config.checkpoint.compression = "zstd"
  with pytest.raises(config_lib.ConfigError, match=r"^checkpoint.writer: .*compression"):
    config_lib.validate(tiny_config, 1)
  tiny_config.checkpoint.compression = "none"
  config_lib.validate(tiny_config, 1)


def test_the_direct_writer_saves_raw_files_and_trees_of_either_writer_read_both(tmp_path):
  state = _state()
  direct = ckpt.CheckpointTree(tmp_path, writer="direct")
  assert direct.compression == "none"
  _save(direct, 1, state)
  files = sorted(p.name for p in (tmp_path / "checkpoints" / "main" / "1" / "state").iterdir())
  assert {"raw-0.bin", "raw-0.json", "raw_tree.json"} <= set(files)
  assert not any("ocdbt" in f or f.startswith("_") for f in files)
  direct.close()
  orbax = ckpt.CheckpointTree(tmp_path, writer="orbax", compression="zstd")
  _save(orbax, 2, state)
  for step in (1, 2):
    _assert_same(orbax.restore(StateRef("main", step), state)[0], state)
  orbax.close()
  again = ckpt.CheckpointTree(tmp_path, writer="direct", read_only=True)
  target = {k: np.zeros(v.shape, v.dtype) for k, v in state.items()}
  for step in (1, 2):
    restored, meta = again.restore(StateRef("main", step), target)
    _assert_same(restored, state)
    assert meta["entry"]["step"] == step


def test_a_truncated_direct_save_is_reported_broken(tmp_path):
  tree = ckpt.CheckpointTree(tmp_path, writer="direct")
  _save(tree, 3, _state())
  tree.close()
  data = tmp_path / "checkpoints" / "main" / "3" / "state" / "raw-0.bin"
  os.truncate(data, 4096)
  again = ckpt.CheckpointTree(tmp_path, writer="direct", read_only=True)
  with pytest.raises(ckpt.BrokenCheckpoint, match="raw-0.bin"):
    again.restore(StateRef("main", 3), _state())
