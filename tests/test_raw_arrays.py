"""The direct-I/O writer's format (`wsdjax/raw_arrays.py`): exact round trips of every
dtype and sharding, restores onto other meshes, a snapshot that survives donation, the
page cache left alone, and clear errors for damaged or mismatched files."""

import ctypes
import errno
import json
import mmap
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from wsdjax import raw_arrays


def _mesh(n: int):
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def _tree():
  """Every kind of leaf a train state has, and some it might."""
  rng = np.random.default_rng(0)
  mesh = _mesh(8)
  return {
      "sharded": jax.device_put(rng.standard_normal((16, 24), np.float32),
                                NamedSharding(mesh, P("data", None))),
      "replicated": jax.device_put(rng.standard_normal((5, 3), np.float32),
                                   NamedSharding(mesh, P())),
      "bf16": jnp.asarray(rng.standard_normal((7,)), jnp.bfloat16),
      "step": jnp.int32(41),
      "mask": jnp.asarray([True, False, True]),
      "empty": jnp.zeros((0, 4), jnp.float32),
      "host": np.arange(6, dtype=np.int64).reshape(2, 3),
  }


def _save(tree, directory, pool=None):
  pool = pool or raw_arrays.StagingPool()
  snap = raw_arrays.snapshot(tree, pool)
  os.makedirs(directory, exist_ok=True)
  snap.write(directory)
  snap.release()
  return snap


def _equal(a, b):
  np.testing.assert_array_equal(np.asarray(a).astype(np.float64),
                                np.asarray(b).astype(np.float64))


def test_a_round_trip_is_exact_for_every_leaf_into_host_and_sharded_targets(tmp_path):
  tree = _tree()
  snap = _save(tree, tmp_path)
  # The replicated array is written once, not once per device.
  keys = [s["key"] for s in snap.shards]
  assert keys.count("['replicated']") == 1 and keys.count("['sharded']") == 8
  assert all(s["offset"] % raw_arrays.ALIGN == 0 for s in snap.shards)
  host = raw_arrays.read(tmp_path, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree))
  for key in tree:
    assert isinstance(host[key], np.ndarray) and host[key].dtype == tree[key].dtype
    _equal(host[key], tree[key])
  back = raw_arrays.read(tmp_path, tree)  # concrete jax.Arrays: their shardings
  for key in tree:
    if isinstance(tree[key], jax.Array):
      assert back[key].sharding == tree[key].sharding
    _equal(back[key], tree[key])


def test_a_state_saved_on_one_mesh_restores_onto_another(tmp_path):
  tree = _tree()
  _save(tree, tmp_path)
  mesh4 = _mesh(4)
  target = {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=NamedSharding(
      mesh4, P(None, "data") if k == "sharded" else P())) for k, v in tree.items()}
  back = raw_arrays.read(tmp_path, target)
  assert back["sharded"].sharding.spec == P(None, "data")
  assert back["sharded"].addressable_shards[0].data.shape == (16, 6)
  for key in tree:
    _equal(back[key], tree[key])
  # A target of another dtype gets the values cast, as Orbax's restore does.
  as_f32 = raw_arrays.read(tmp_path, {**target, "bf16": jax.ShapeDtypeStruct((7,), jnp.float32)})
  assert as_f32["bf16"].dtype == np.float32
  _equal(as_f32["bf16"], tree["bf16"])


def test_the_snapshot_is_taken_at_save_so_the_next_step_may_donate_the_state(tmp_path):
  x = jnp.arange(1000.0)
  snap = raw_arrays.snapshot({"x": x}, raw_arrays.StagingPool())
  step = jax.jit(lambda a: a * 0 - 1, donate_argnums=0)
  y = step(x)  # overwrites (donates) x's buffer, as the train step does
  jax.block_until_ready(y)
  assert x.is_deleted()
  snap.write(tmp_path)
  snap.release()
  _equal(raw_arrays.read(tmp_path, {"x": np.zeros(1000, np.float32)})["x"], np.arange(1000.0))


def test_saves_reuse_one_staging_buffer(tmp_path):
  pool = raw_arrays.StagingPool()
  tree = {"a": jnp.ones((300, 300))}
  first = raw_arrays.snapshot(tree, pool)
  buffer = first._buffer
  first.release()
  second = raw_arrays.snapshot(tree, pool)
  assert second._buffer is buffer  # resident memory: no page faults on the next save
  other = raw_arrays.snapshot(tree, pool)  # while `second` is writing: a buffer of its own
  assert other._buffer is not buffer
  second.release()
  other.release()


def _resident_pages(path) -> int:
  """Pages of `path` in the page cache: mincore(2) of a read-only mapping (that touches
  none of them)."""
  libc = ctypes.CDLL(None, use_errno=True)
  libc.mmap.restype = ctypes.c_void_p
  libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                        ctypes.c_int, ctypes.c_long]
  libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
  libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
  size = os.path.getsize(path)
  pages = -(-size // mmap.PAGESIZE)
  fd = os.open(path, os.O_RDONLY)
  try:
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
      vec = (ctypes.c_ubyte * pages)()
      assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
      return sum(v & 1 for v in vec)
    finally:
      libc.munmap(addr, size)
  finally:
    os.close(fd)


def _takes_o_direct(directory) -> bool:
  try:
    fd = os.open(os.path.join(directory, "probe"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
  except OSError:
    return False
  os.close(fd)
  return True


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
def test_the_write_bypasses_the_page_cache(tmp_path):
  if not _takes_o_direct(tmp_path):
    pytest.skip(f"the filesystem of {tmp_path} refuses O_DIRECT (the writer falls back)")
  _save({"a": jnp.ones((1024, 1024), jnp.float32)}, tmp_path)
  data = tmp_path / "raw-0.bin"
  assert os.path.getsize(data) == 4 << 20
  assert _resident_pages(data) == 0  # through the page cache: all 1024 pages resident
  with open(data, "rb") as f:
    f.read()
  assert _resident_pages(data) == 1024  # the probe sees cached pages


def test_a_filesystem_without_o_direct_gets_a_buffered_write(tmp_path, monkeypatch):
  real_open, opened = os.open, []

  def no_direct(path, flags, *args):
    if str(path).endswith("raw-0.bin"):
      opened.append(flags)
    if flags & getattr(os, "O_DIRECT", 0):
      raise OSError(errno.EINVAL, "Invalid argument")
    return real_open(path, flags, *args)

  monkeypatch.setattr(os, "open", no_direct)
  tree = {"a": jnp.arange(5000, dtype=jnp.int32)}
  _save(tree, tmp_path)
  monkeypatch.undo()
  _equal(raw_arrays.read(tmp_path, {"a": np.zeros(5000, np.int32)})["a"], tree["a"])
  if hasattr(os, "O_DIRECT"):
    assert len(opened) == 2 and opened[0] & os.O_DIRECT and not opened[1] & os.O_DIRECT


def test_a_disk_that_refuses_an_o_direct_write_gets_the_file_rewritten_buffered(
    tmp_path, monkeypatch):
  real_write, calls = os.write, []

  def refuse_first(fd, data):
    calls.append(len(data))
    if len(calls) == 1:
      raise OSError(errno.EINVAL, "Invalid argument")  # e.g. 8 KiB logical blocks
    return real_write(fd, data)

  monkeypatch.setattr(os, "write", refuse_first)
  tree = {"a": jnp.arange(5000, dtype=jnp.float32)}
  _save(tree, tmp_path)
  monkeypatch.undo()
  _equal(raw_arrays.read(tmp_path, {"a": np.zeros(5000, np.float32)})["a"], tree["a"])
  assert calls[0] == calls[1] == 20480  # the whole (aligned) shard again, from the start


def test_a_failed_write_leaves_the_pool_usable(tmp_path, monkeypatch):
  pool = raw_arrays.StagingPool(keep=1)
  tree = {"a": jnp.ones((100, 100))}
  first, second = raw_arrays.snapshot(tree, pool), raw_arrays.snapshot(tree, pool)

  def full_disk(fd, data):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "write", full_disk)
  failures = []
  for snap in (first, second):  # two saves in flight (main and a decay branch)
    try:
      snap.write(tmp_path)
    except OSError as e:
      failures.append(e)  # kept alive, as Orbax keeps a failed commit's exception
    finally:
      snap.release()
  monkeypatch.undo()
  assert [e.errno for e in failures] == [errno.ENOSPC] * 2
  assert len(pool._free) == 1
  _save(tree, tmp_path / "again", pool)  # and the next save works


def test_host_leaves_of_either_byte_order_round_trip(tmp_path):
  tree = {"big": np.arange(3, dtype=">i4"), "little": np.arange(3, dtype="<f8")}
  _save(tree, tmp_path)
  back = raw_arrays.read(tmp_path, tree)
  np.testing.assert_array_equal(back["big"], [0, 1, 2])
  np.testing.assert_array_equal(back["little"], [0.0, 1.0, 2.0])


def test_a_typed_prng_key_is_refused_naming_the_leaf():
  with pytest.raises(TypeError, match=r"\['rng'\] is a typed PRNG key.*key_data"):
    raw_arrays.snapshot({"rng": jax.random.key(0)}, raw_arrays.StagingPool())


def test_process_local_copies_of_one_array_are_stored_once(tmp_path):
  """Each process may save its own single-device copy of a value (replica 0 each): a
  reader keeps one copy of every stored slice."""
  _save({"x": jnp.arange(4.0)}, tmp_path)
  shards = json.loads((tmp_path / "raw-0.json").read_text())
  (tmp_path / "raw-1.json").write_text(json.dumps(shards))  # as written by a 2nd process
  (tmp_path / "raw-1.bin").write_bytes((tmp_path / "raw-0.bin").read_bytes())
  _equal(raw_arrays.read(tmp_path, {"x": np.zeros(4, np.float32)})["x"], np.arange(4.0))


def test_damaged_or_mismatched_files_are_clear_errors(tmp_path):
  tree = _tree()
  _save(tree, tmp_path)
  host = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
  with pytest.raises(ValueError, match=r"no leaf \['extra'\]"):
    raw_arrays.read(tmp_path, {**host, "extra": np.zeros(2)})
  with pytest.raises(ValueError, match=r"\['step'\] has shape \(\) in the checkpoint"):
    raw_arrays.read(tmp_path, {**host, "step": np.zeros(3, np.int32)})
  with pytest.raises(ValueError, match=r"target has no leaf \['mask'\] of the checkpoint"):
    raw_arrays.read(tmp_path, {k: v for k, v in host.items() if k != "mask"})
  shards = json.loads((tmp_path / "raw-0.json").read_text())
  first = [s for s in shards["shards"] if s["key"] == "['sharded']"][0]
  shards["shards"].remove(first)  # as if one process's shard list were missing
  (tmp_path / "raw-0.json").write_text(json.dumps(shards))
  with pytest.raises(ValueError, match=r"shards of \['sharded'\] cover 336 of the 384"):
    raw_arrays.read(tmp_path, host)
  os.truncate(tmp_path / "raw-0.bin", 4096)
  with pytest.raises(ValueError, match="raw-0.bin is truncated"):
    raw_arrays.read(tmp_path, host)
  tree_file = tmp_path / raw_arrays.TREE_FILE
  tree_file.write_text(json.dumps({"format": "other/9", "leaves": []}))
  with pytest.raises(ValueError, match="format 'other/9'"):
    raw_arrays.read(tmp_path, host)


_WRITER = """
import sys
import jax, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from wsdjax import checkpoint as ckpt
from wsdjax.process import distributed
from wsdjax.plan import StateRef
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
values = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
state = {"sharded": jax.make_array_from_callback(values.shape, NamedSharding(mesh, P("data")),
                                                 lambda index: values[index]),
         "replicated": jax.device_put(np.float32(2.5), NamedSharding(mesh, P()))}
tree = ckpt.CheckpointTree(sys.argv[3], writer="direct")
tree.save(StateRef("main", 1), state, {"branch": "main", "step": 1})
tree.wait()
tree.close()
"""


def test_each_process_writes_its_own_shards_and_a_reader_assembles_them(tmp_path):
  """Two processes x 2 devices (jax.distributed on 127.0.0.1) save one state through
  CheckpointTree's direct writer; one process with one device restores it."""
  import subprocess
  import sys

  from conftest import REPO, subprocess_env
  sys.path.insert(0, os.path.join(REPO, "launch"))
  import local
  from wsdjax import checkpoint as ckpt
  from wsdjax.plan import StateRef

  address = f"127.0.0.1:{local.free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", _WRITER, address, str(i), str(tmp_path)],
                            cwd=REPO, env=subprocess_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out[-3000:]
  state_dir = tmp_path / "checkpoints" / "main" / "1" / "state"
  for process in (0, 1):  # rows 4-7 live on process 1's devices
    shards = json.loads((state_dir / f"raw-{process}.json").read_text())["shards"]
    rows = sorted(s["index"][0] for s in shards if s["key"] == "['sharded']")
    assert rows == ([[0, 2], [2, 4]] if process == 0 else [[4, 6], [6, 8]])
  tree = ckpt.CheckpointTree(tmp_path, read_only=True)
  state, _ = tree.restore(StateRef("main", 1), {"sharded": np.zeros((8, 6), np.float32),
                                                "replicated": np.float32(0)})
  np.testing.assert_array_equal(state["sharded"], np.arange(48, dtype=np.float32).reshape(8, 6))
  assert state["replicated"] == 2.5
