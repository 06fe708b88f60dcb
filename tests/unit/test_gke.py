"""launch/gke.py in-process: the JobSet manifest field by field, the xpk command, and bad
input as one line with exit 2 (nothing reaches a cluster or the network)."""

import importlib.util
import os
import sys
import shlex

import pytest
import yaml

from conftest import REPO

IMAGE = "us-docker.pkg.dev/PROJECT/REPO/wsdjax:latest"
RUN = ["--config", "configs/paper_0.1b.py", "--workdir", "gs://BUCKET/runs/p01",
       "--image", IMAGE]
OVERRIDE = "--config.data.path=gs://BUCKET/store"


@pytest.fixture(scope="module")
def gke():
  """The launch/gke.py module (launch/ is no package: its tools import each other as
  scripts do, from their folder)."""
  if os.path.join(REPO, "launch") not in sys.path:
    sys.path.insert(0, os.path.join(REPO, "launch"))
  spec = importlib.util.spec_from_file_location("gke", os.path.join(REPO, "launch", "gke.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def jobset(gke, capsys, accelerator, *extra):
  """The manifest `gke.py manifest` prints for `accelerator`, parsed."""
  assert gke.main(["manifest", "--accelerator-type", accelerator, *RUN, *extra]) == 0
  return yaml.safe_load(capsys.readouterr().out)


def pod_of(doc):
  """(the replicatedJob, its Job spec, its pod spec) of a one-replicatedJob JobSet."""
  (rjob,) = doc["spec"]["replicatedJobs"]
  job = rjob["template"]["spec"]
  return rjob, job, job["template"]["spec"]


def test_manifest_v5litepod_64(gke, capsys):
  doc = jobset(gke, capsys, "v5litepod-64", "--max-restarts", "7", OVERRIDE)
  assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and doc["kind"] == "JobSet"
  assert doc["metadata"]["name"] == "wsdjax-paper-0-1b"
  assert doc["spec"]["failurePolicy"] == {"maxRestarts": 7}
  assert doc["spec"]["network"] == {"enableDNSHostnames": True}
  rjob, job, pod = pod_of(doc)
  assert rjob["replicas"] == 1
  assert (job["parallelism"], job["completions"], job["backoffLimit"]) == (16, 16, 0)
  assert pod["restartPolicy"] == "Never"
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                 "cloud.google.com/gke-tpu-topology": "8x8"}
  (container,) = pod["containers"]
  assert container["image"] == IMAGE
  assert container["resources"]["limits"] == {"google.com/tpu": "4"}
  assert container["command"] == [
      "python", "-m", "wsdjax.train", "--config=configs/paper_0.1b.py",
      "--workdir=gs://BUCKET/runs/p01", OVERRIDE]


def test_manifest_v4_64_multislice_to_a_file(gke, capsys, tmp_path):
  out = tmp_path / "jobset.yaml"
  assert gke.main(["manifest", "--accelerator-type", "v4-64", *RUN, "--num-slices", "2",
                   "--name", "p01", "--output", str(out)]) == 0
  assert "kubectl apply -f" in capsys.readouterr().out
  doc = yaml.safe_load(out.read_text())
  rjob, job, pod = pod_of(doc)
  assert doc["metadata"]["name"] == "p01" and rjob["replicas"] == 2
  assert doc["spec"]["failurePolicy"]["maxRestarts"] == 50  # the default
  assert (job["parallelism"], job["completions"]) == (8, 8)  # 32 chips, 4 a host
  assert pod["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] == "tpu-v4-podslice"
  assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x4x4"
  assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == "4"


@pytest.mark.parametrize("accelerator, hosts, chips, topology", [
    ("v5litepod-8", 1, 8, "2x4"), ("v6e-4", 1, 4, "2x2"), ("v5p-8", 1, 4, "2x2x1"),
    ("v5p-16", 2, 4, "2x2x2"), ("v6e-16", 4, 4, "4x4")])
def test_hosts_and_chips_per_host(gke, capsys, accelerator, hosts, chips, topology):
  _, job, pod = pod_of(jobset(gke, capsys, accelerator))
  assert job["parallelism"] == hosts
  assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == str(chips)
  assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == topology


def test_xpk_command(gke, capsys):
  assert gke.main(["xpk", "--accelerator-type", "v5litepod-64", *RUN, "--cluster", "C",
                   "--num-slices", "2", OVERRIDE]) == 0
  argv = shlex.split(capsys.readouterr().out)
  assert argv[:3] == ["xpk", "workload", "create"]
  flags = dict(a.split("=", 1) for a in argv[3:] if "=" in a)
  assert flags == {
      "--cluster": "C", "--workload": "wsdjax-paper-0-1b", "--docker-image": IMAGE,
      "--tpu-type": "v5litepod-64", "--num-slices": "2", "--max-restarts": "50",
      "--command": "python -m wsdjax.train --config=configs/paper_0.1b.py "
                   f"--workdir=gs://BUCKET/runs/p01 {OVERRIDE}"}
  assert "--restart-on-user-code-failure" in argv


@pytest.mark.parametrize("args, message", [
    (["--workdir", "/tmp/run"], "--workdir: '/tmp/run' is not on GCS"),
    (["--accelerator-type", "v9-64"], "--accelerator-type: unknown TPU slice 'v9-64'"),
    (["--accelerator-type", "v4-48"], "--accelerator-type: 'v4-48' is not a slice size"),
    (["--max-restarts", "0"], "--max-restarts: 0 is not a count >= 1"),
    (["--num-slices", "-1"], "--num-slices: -1 is not a count >= 1"),
    (["--name", "Bad_Name"], "--name: 'Bad_Name' is not a Kubernetes name"),
    (["--config", "configs/nope.py"], "--config: 'configs/nope.py' is not a file"),
    (["--config.seed=-1"], "seed: must be an integer"),
    (["--config.train.stepz=5"], "train.stepz: unknown config key 'stepz' of train"),
    (["--config.seed=abc"], "--config: cannot load configs/paper_0.1b.py"),
    (["--verbose"], "arguments: unexpected '--verbose'"),
])
def test_bad_input_is_one_line_exit_2(gke, capsys, tmp_path, args, message):
  out = tmp_path / "jobset.yaml"
  with pytest.raises(SystemExit) as e:
    gke.main(["manifest", "--accelerator-type", "v5litepod-64", *RUN, "--output", str(out),
              *args])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("wsdjax: ")
  assert message in err
  assert not out.exists()  # checked before anything is written


def test_xpk_needs_a_cluster(gke, capsys):
  with pytest.raises(SystemExit) as e:
    gke.main(["xpk", "--accelerator-type", "v5litepod-64", *RUN])
  assert e.value.code == 2 and capsys.readouterr().err.startswith("wsdjax: --cluster: missing")
