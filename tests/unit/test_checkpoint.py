"""CheckpointTree's format and integrity: Orbax's standard PyTree checkpoint (zstd or raw
chunks by `checkpoint.compression`), read back by plain Orbax without wsdjax; every file of
a save checksummed, so a flipped byte, a truncated or a deleted file is reported; saves of
the removed raw-array writer refused in one line."""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import one_device_mesh

from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax.config import stored as run_config
from wsdjax.training import trainer as trainer_lib
from wsdjax.checkpoint import integrity
from wsdjax.schedule.plan import StateRef


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


@pytest.mark.parametrize("backend, expected", [("cpu", "none"), ("gpu", "zstd"),
                                               ("tpu", "zstd")])
def test_auto_compression_is_raw_only_on_the_cpu_backend(backend, expected):
  assert ckpt.resolve_compression("auto", backend) == expected
  assert ckpt.resolve_compression("zstd", "cpu") == "zstd"
  assert ckpt.resolve_compression("none", "tpu") == "none"


def test_an_unknown_compression_is_refused(tmp_path):
  with pytest.raises(ValueError, match="compression"):
    ckpt.resolve_compression("lz4", "cpu")
  with pytest.raises(ValueError, match="compression"):
    ckpt.CheckpointTree(tmp_path, compression="auto")  # resolved before the tree


def test_zstd_and_raw_saves_restore_under_either_setting(tmp_path):
  state = _state()
  raw_bytes = sum(np.asarray(v).nbytes for v in state.values())
  with ckpt.CheckpointTree(tmp_path, compression="zstd") as zstd_tree:
    _save(zstd_tree, 1, state)
  with ckpt.CheckpointTree(tmp_path, compression="none") as raw_tree:
    _save(raw_tree, 2, state)
    steps = tmp_path / "checkpoints" / "main"
    assert _bytes_on_disk(steps / "2" / "state") > raw_bytes
    assert _bytes_on_disk(steps / "1" / "state") < raw_bytes / 4
    for step in (1, 2):  # the raw tree restores the zstd save too
      _assert_same(raw_tree.restore(StateRef("main", step), state)[0], state)
  again = ckpt.CheckpointTree(tmp_path, compression="zstd", read_only=True)
  target = {k: np.zeros(v.shape, v.dtype) for k, v in state.items()}  # host arrays
  restored, meta = again.restore(StateRef("main", 2), target)
  _assert_same(restored, state)
  assert isinstance(restored["flat"], np.ndarray) and meta["entry"]["step"] == 2


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_plain_orbax_restores_a_save_without_wsdjax(tmp_path, compression):
  state = _state()
  with ckpt.CheckpointTree(tmp_path, compression=compression) as tree:
    _save(tree, 4, state)
    path = tree.path(StateRef("main", 4)) / "state"
  _assert_same(ocp.StandardCheckpointer().restore(path), state)
  _assert_same(ocp.PyTreeCheckpointer().restore(path), state)
  mesh = one_device_mesh()
  on_mesh = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
      a.shape, a.dtype, sharding=jax.sharding.NamedSharding(mesh, jax.P())), state)
  restored = ocp.StandardCheckpointer().restore(path, on_mesh)
  _assert_same(restored, state)
  assert restored["flat"].sharding == on_mesh["flat"].sharding


def test_saves_written_with_orbaxs_standard_handler_restore(tmp_path):
  state = _state()
  root = ckpt.checkpoint_dir(tmp_path)
  old = ocp.CheckpointManager(root / "main", item_names=("state", "meta"))
  meta = {"entry": {"branch": "main", "step": 5}}
  old.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)))
  old.wait_until_finished()
  old.close()
  with ckpt.CheckpointTree(tmp_path, compression="none") as tree:
    assert [e["step"] for e in tree.manifest()] == [5]
    # Written without wsdjax, it has no integrity record: unverified, so not restored
    # unless asked (the trainer never asks; checkpoint.restore asks, with a warning).
    with pytest.raises(ckpt.UnverifiedCheckpoint, match="main@5 is unverified .no integrity"):
      tree.restore(StateRef("main", 5), state)
    restored, got = tree.restore(StateRef("main", 5), state, unverified_ok=True)
    _assert_same(restored, state)
    assert got == meta


@pytest.mark.integration
def test_the_trainer_saves_uncompressed_on_the_cpu_backend_unless_asked(tiny_config, tmp_path):
  config_lib.validate(tiny_config, 1)
  for compression, expected in (("auto", "none"), ("zstd", "zstd")):
    tiny_config.checkpoint.compression = compression
    with trainer_lib.Trainer(tiny_config, tmp_path / compression, mesh=one_device_mesh(),
                             stream=io.StringIO()) as trainer:
      assert trainer.tree.compression == expected


def _files_of_a_save(tmp_path) -> list[str]:
  with ckpt.CheckpointTree(tmp_path) as tree:
    _save(tree, 1, _state())
    _save(tree, 2, _state())
  return integrity.files_of(ckpt.checkpoint_dir(tmp_path) / "main" / "2")


def test_every_file_of_a_save_is_checksummed_when_it_completes(tmp_path):
  files = _files_of_a_save(tmp_path)
  record = json.loads((tmp_path / "checkpoints" / "integrity" / "main-2.json").read_text())
  assert sorted(record) == files and len(files) > 5
  assert any(f.startswith("state/") and "/d/" in f for f in files)  # the array data
  assert all(len(r["sha256"]) == 64 for r in record.values())


def test_a_flipped_byte_in_any_file_of_a_save_is_reported(tmp_path):
  files = _files_of_a_save(tmp_path)
  top = ckpt.checkpoint_dir(tmp_path) / "main" / "2"
  tree = ckpt.CheckpointTree(tmp_path, read_only=True)
  for rel in files:
    path = top / rel
    original = path.read_bytes()
    if not original:
      continue
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x10
    path.write_bytes(bytes(flipped))
    with pytest.raises(ckpt.BrokenCheckpoint, match=f"main@2 is broken: {rel} changed content"):
      tree.restore(StateRef("main", 2), _state())
    path.write_bytes(original)
  _assert_same(tree.restore(StateRef("main", 2), _state())[0], _state())


def test_a_truncated_or_deleted_file_is_reported(tmp_path):
  files = _files_of_a_save(tmp_path)
  top = ckpt.checkpoint_dir(tmp_path) / "main" / "2"
  tree = ckpt.CheckpointTree(tmp_path, read_only=True)
  biggest = max(files, key=lambda f: (top / f).stat().length)
  (top / biggest).write_bytes((top / biggest).read_bytes()[:10])
  with pytest.raises(ckpt.BrokenCheckpoint, match=f"{biggest} changed size"):
    tree.restore(StateRef("main", 2), _state())
  (top / files[0]).unlink()
  with pytest.raises(ckpt.BrokenCheckpoint, match="1 file.s. missing"):
    tree.restore(StateRef("main", 2), _state())


@pytest.mark.integration
def test_restore_falls_back_to_the_previous_save_or_names_the_broken_one(tiny_config, tmp_path):
  tiny_config.schedule.budgets = (8,)
  tiny_config.checkpoint.every = 4
  trainer_lib.train_and_evaluate(tiny_config, str(tmp_path), mesh=one_device_mesh(),
                                 stream=io.StringIO())
  with ckpt.CheckpointTree(tmp_path, read_only=True) as tree:
    steps = tree.steps("main")
  newest = tmp_path / "checkpoints" / "main" / str(steps[-1])
  data = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  good = ckpt.restore(str(tmp_path), "main", steps[-2])
  flipped = bytearray(data.read_bytes())
  flipped[100] ^= 1
  data.write_bytes(bytes(flipped))
  got = ckpt.restore(str(tmp_path), "main")  # the previous complete save, with a warning
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(good), strict=True):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(ckpt.BrokenCheckpoint, match=f"main@{steps[-1]} is broken"):
    ckpt.restore(str(tmp_path), "main", steps[-1])


def test_a_save_of_the_removed_raw_writer_is_refused_in_one_line(tmp_path):
  with ckpt.CheckpointTree(tmp_path) as tree:
    _save(tree, 3, _state())
  (tmp_path / "checkpoints" / "main" / "3" / "state" / "raw_tree.json").write_text("{}")
  tree = ckpt.CheckpointTree(tmp_path, read_only=True)
  with pytest.raises(ckpt.CheckpointError, match="raw-array writer, which was removed") as e:
    tree.restore(StateRef("main", 3), _state())
  assert "\n" not in str(e.value)


def test_a_stored_run_config_with_retired_checkpoint_fields_still_loads(tiny_config, tmp_path):
  raw = json.loads(config_lib.to_json(tiny_config))
  raw["checkpoint"] |= {"writer": "direct", "write_priority": "idle"}
  (tmp_path / config_lib.RUN_CONFIG).write_text(json.dumps(raw))
  loaded = config_lib.load_run_config(tmp_path)
  assert "writer" not in loaded.checkpoint and "write_priority" not in loaded.checkpoint
  assert run_config.resume_conflicts(loaded, tiny_config) == []


def test_saves_enter_the_manifest_as_they_complete_not_when_the_branch_rests(tmp_path):
  """Orbax writes one save of a branch at a time: starting a save waits for the one before,
  so every save but the newest is complete, and poll() reports it at once."""
  with ckpt.CheckpointTree(tmp_path, async_save=True) as tree:
    for step in (1, 2, 3):
      tree.save(StateRef("main", step), _state(), {"branch": "main", "step": step})
    done = [e["step"] for e in tree.poll()]
    assert done[:2] == [1, 2] and set(done) <= {1, 2, 3}
    assert [e["step"] for e in tree.manifest()] == done
    tree.wait()
    assert [e["step"] for e in tree.manifest()] == [1, 2, 3]
  records = sorted(p.name for p in (tmp_path / "checkpoints" / "integrity").iterdir())
  assert records == ["main-1.json", "main-2.json", "main-3.json"]
