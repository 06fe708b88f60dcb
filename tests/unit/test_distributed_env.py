"""When wsdjax.runtime.distributed starts jax.distributed: the environments a GKE pod, a multi-host
and a single-host Cloud TPU VM, SLURM, Open MPI and a laptop present, simulated. The TPU VM
metadata server is a fake (or, for the reader itself, a server on 127.0.0.1): nothing here
reaches the network, and jax.distributed.initialize is replaced by a recorder."""

import http.server
import threading

import jax
import pytest

from wsdjax.runtime import distributed

# worker-network-endpoints as a TPU VM's metadata serves them: hostnames (new format) or
# name:id:ip triples (old format); one entry a worker.
ENDPOINTS_4 = "t1v-n-0-w-0:0:10.0.0.2,t1v-n-0-w-1:1:10.0.0.3,t1v-n-0-w-2:2:10.0.0.4," \
              "t1v-n-0-w-3:3:10.0.0.5"
ENDPOINTS_2 = "t1v-n-0-w-0,t1v-n-0-w-1"
ENDPOINTS_1 = "t1v-n-0-w-0:0:10.0.0.2"


def metadata_of(endpoints: str | None):
  """A fake metadata reader serving `endpoints` (None: no such attribute), counting calls."""
  def read(key):
    read.calls.append(key)
    assert key == "worker-network-endpoints", key
    return endpoints
  read.calls = []
  return read


def no_metadata(key):
  raise AssertionError(f"the metadata server was queried for {key}")


def down(key):
  raise ConnectionRefusedError(111, "Connection refused")


GKE = {"TPU_WORKER_ID": "1", "TPU_SKIP_MDS_QUERY": "true", "TPU_ACCELERATOR_TYPE": "v5p-32"}

# (name, env, on a Cloud TPU VM, metadata reader, expected)
CASES = [
    ("laptop", {}, False, no_metadata, False),
    ("laptop_jax_set_skip", {"TPU_SKIP_MDS_QUERY": "1"}, False, no_metadata, False),
    ("gke_multi_host", GKE | {"TPU_WORKER_HOSTNAMES": "h-0,h-1,h-2,h-3"}, True, no_metadata,
     True),
    ("gke_single_host", GKE | {"TPU_WORKER_HOSTNAMES": "h-0", "TPU_WORKER_ID": "0"}, True,
     no_metadata, False),
    ("gke_process_addresses", {"TPU_PROCESS_ADDRESSES": "10.0.0.2:8476,10.0.0.3:8476"},
     True, no_metadata, True),
    ("tpu_vm_multi_host_metadata", {}, True, metadata_of(ENDPOINTS_4), True),
    ("tpu_vm_multi_host_metadata_hostnames", {}, True, metadata_of(ENDPOINTS_2), True),
    ("tpu_vm_multi_host_launcher", {"WSDJAX_TPU_WORKERS": "8"}, True, no_metadata, True),
    ("tpu_vm_single_host_metadata", {}, True, metadata_of(ENDPOINTS_1), False),
    ("tpu_vm_single_host_launcher", {"WSDJAX_TPU_WORKERS": "1"}, True, no_metadata, False),
    ("tpu_vm_no_endpoints_attribute", {}, True, metadata_of(None), False),
    ("tpu_vm_cpu_only_run", {"JAX_PLATFORMS": "cpu"}, True, no_metadata, False),
    ("tpu_vm_tpu_platform", {"JAX_PLATFORMS": "tpu,cpu"}, True, metadata_of(ENDPOINTS_4),
     True),
    ("multislice_single_host_slices", {"MEGASCALE_NUM_SLICES": "2",
                                       "WSDJAX_TPU_WORKERS": "1"}, True, no_metadata, True),
    ("local_sh", {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, False, no_metadata, True),
    ("slurm", {"SLURM_NTASKS": "8"}, False, no_metadata, True),
    ("slurm_one_task", {"SLURM_NTASKS": "1"}, False, no_metadata, False),
    ("open_mpi", {"OMPI_COMM_WORLD_SIZE": "2"}, False, no_metadata, True),
]


@pytest.mark.parametrize("env, on_tpu_vm, metadata, expected",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_is_multiprocess_environment(env, on_tpu_vm, metadata, expected):
  assert distributed.is_multiprocess_environment(
      env, metadata=metadata, on_tpu_vm=on_tpu_vm) is expected


def test_metadata_is_asked_once_and_only_on_a_tpu_vm():
  read = metadata_of(ENDPOINTS_4)
  assert distributed.tpu_worker_count({}, metadata=read, on_tpu_vm=True) == 4
  assert read.calls == ["worker-network-endpoints"]
  assert distributed.tpu_worker_count({}, metadata=no_metadata, on_tpu_vm=False) == 1


@pytest.mark.parametrize("env, message", [
    ({}, "distributed: this Cloud TPU VM's metadata server did not answer"),
    ({"WSDJAX_TPU_WORKERS": "0"}, "distributed: WSDJAX_TPU_WORKERS='0' is not a count"),
    ({"WSDJAX_TPU_WORKERS": "two"}, "distributed: WSDJAX_TPU_WORKERS='two' is not a count"),
])
def test_unknown_worker_count_is_an_error_not_a_single_host(env, message):
  """A TPU VM whose worker count cannot be told must not run alone (it would train on its
  own beside its peers): a one-line ValueError, which train.py prints and exits 2 on."""
  with pytest.raises(ValueError, match=message) as e:
    distributed.is_multiprocess_environment(env, metadata=down, on_tpu_vm=True)
  assert "\n" not in str(e.value)
  if not env:
    assert "set WSDJAX_TPU_WORKERS" in str(e.value)


def test_defaults_consult_jax_and_the_module_reader(monkeypatch):
  """Without injections: metadata only where jax found a Cloud TPU VM, read through
  distributed.read_metadata."""
  monkeypatch.setattr(distributed, "read_metadata", metadata_of(ENDPOINTS_4))
  monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)
  assert distributed.is_multiprocess_environment({}) is False
  assert distributed.read_metadata.calls == []
  monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: True)
  assert distributed.is_multiprocess_environment({}) is True
  assert distributed.read_metadata.calls == ["worker-network-endpoints"]


def test_this_machine_is_not_a_cloud_tpu_vm():
  """The test machines have no TPU: jax's flag is off, and the real environment (where jax
  set TPU_SKIP_MDS_QUERY on finding no TPU chips) never leads to a metadata query."""
  if distributed.on_cloud_tpu_vm():
    pytest.skip("running on a Cloud TPU VM")
  assert distributed.tpu_worker_count(env={}, metadata=no_metadata) == 1
  assert distributed.tpu_worker_count(metadata=no_metadata) == 1  # os.environ


@pytest.fixture
def recorded_initialize(monkeypatch):
  """jax.distributed.initialize replaced by a recorder of its keyword arguments."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  return calls


@pytest.mark.parametrize("env, on_tpu_vm, metadata, expected",
                         [c[1:] for c in CASES if c[0] != "local_sh"],
                         ids=[c[0] for c in CASES if c[0] != "local_sh"])
def test_initialize_starts_jax_distributed_exactly_on_several_processes(
    monkeypatch, recorded_initialize, env, on_tpu_vm, metadata, expected):
  monkeypatch.setattr(distributed, "read_metadata", metadata)
  monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: on_tpu_vm)
  assert distributed.initialize(env=env | {"JAX_INIT_TIMEOUT": "60"}) is expected
  # Several processes: one call, jax's cluster detection fills address, count and id.
  assert recorded_initialize == ([{"initialization_timeout": 60}] if expected else [])


def test_initialize_on_a_single_host_tpu_vm_never_waits(monkeypatch, recorded_initialize):
  monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: True)
  monkeypatch.setattr(distributed, "read_metadata", metadata_of(ENDPOINTS_1))
  assert distributed.initialize(env={}) is False
  monkeypatch.setattr(distributed, "read_metadata", no_metadata)
  assert distributed.initialize(env={"WSDJAX_TPU_WORKERS": "1"}) is False
  assert recorded_initialize == []


class _Metadata(http.server.BaseHTTPRequestHandler):
  """A metadata server on 127.0.0.1: the endpoints of a 2-worker slice; 404 otherwise;
  403 without the Metadata-Flavor header (as GCE's)."""

  def do_GET(self):
    if self.headers.get("Metadata-Flavor") != "Google":
      self.send_error(403)
    elif self.path == "/computeMetadata/v1/instance/attributes/worker-network-endpoints":
      body = ENDPOINTS_2.encode()
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)
    else:
      self.send_error(404)

  def log_message(self, *args):
    pass


def test_read_metadata_against_a_loopback_server(monkeypatch):
  server = http.server.HTTPServer(("127.0.0.1", 0), _Metadata)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_port}")
    assert distributed.read_metadata("worker-network-endpoints") == ENDPOINTS_2
    assert distributed.read_metadata("agent-worker-number-missing") is None
    assert distributed.tpu_worker_count({}, on_tpu_vm=True) == 2
  finally:
    server.shutdown()
    server.server_close()
  # Nobody listens there now: an OSError, after METADATA_TRIES quick tries.
  monkeypatch.setattr(distributed, "METADATA_TRIES", 1)
  with pytest.raises(OSError):
    distributed.read_metadata("worker-network-endpoints")
