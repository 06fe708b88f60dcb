"""Train on a TPU slice of a GKE cluster: a JobSet manifest for kubectl, or an xpk command.

  python launch/gke.py manifest --accelerator-type v5litepod-64 --config configs/paper_0.1b.py
      --workdir gs://BUCKET/runs/p01 --image IMAGE [--name NAME] [--max-restarts 50]
      [--num-slices 1] [--output F] [--config.a.b=value ...]
  python launch/gke.py xpk ...the same flags... --cluster CLUSTER

`manifest` writes a JobSet (YAML; stdout unless --output): one Job a slice, one pod a TPU
host, each running `python -m wsdjax.train` from IMAGE (built from ./Dockerfile). When a pod
dies (a preempted or repaired node, a failed host) the JobSet recreates every pod, up to
--max-restarts times, and the trainer resumes from the last checkpoint in the workdir. GKE's
TPU webhook gives each pod TPU_WORKER_HOSTNAMES and TPU_WORKER_ID, from which
wsdjax.runtime.distributed starts jax.distributed. `kubectl apply -f F` submits it.
`xpk` prints the matching `xpk workload create` command instead.

The config and its overrides are loaded and validated here first, as wsdjax.train will
load them; the slice's hosts share nothing but the network, so the workdir must be on GCS.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys

from preflight import REPO, config_path, fail, load_config, tpu_slice

# GKE's node label value by generation (cloud.google.com/gke-tpu-accelerator).
ACCELERATORS = {"v4": "tpu-v4-podslice", "v5litepod": "tpu-v5-lite-podslice",
                "v5p": "tpu-v5p-slice", "v6e": "tpu-v6e-slice"}
CHIPS_PER_HOST = 4  # a multi-host slice's VMs (ct4p, ct5lp-hightpu-4t, ct5p, ct6e) hold 4
SINGLE_HOST_MAX = {"v5litepod": 8, "v6e": 8}  # up to this many chips: one VM (1, 4 or 8)
NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 40  # xpk's limit; pod hostnames <name>-slice-<j>-<i> must stay under 64
CONTAINER_DIR = "/app"  # where the Dockerfile copies the checkout


def hosts(s) -> tuple[int, int]:
  """(hosts, chips per host) of slice `s` on GKE: 4 chips a VM, except the single-host
  v5e/v6e shapes of up to 8 chips and the 4-chip v4/v5p slice, which are one VM."""
  if s.chips <= SINGLE_HOST_MAX.get(s.generation.prefix, CHIPS_PER_HOST):
    return 1, s.chips
  return s.chips // CHIPS_PER_HOST, CHIPS_PER_HOST


def train_command(config: str, workdir: str, overrides: list[str]) -> list[str]:
  """The command every pod runs (in CONTAINER_DIR): wsdjax.train on the config and workdir."""
  return ["python", "-m", "wsdjax.train", f"--config={config}", f"--workdir={workdir}",
          *overrides]


def pod_spec(s, image: str, command: list[str]) -> dict:
  """One TPU host's pod: on a node of the slice's type and topology, holding all its chips."""
  _, chips = hosts(s)
  return {
      "restartPolicy": "Never",  # the JobSet restarts the whole slice, never one pod
      "hostNetwork": True,  # as Google's TPU JobSet examples: the host's NICs for DCN
      "dnsPolicy": "ClusterFirstWithHostNet",
      "nodeSelector": {
          "cloud.google.com/gke-tpu-accelerator": ACCELERATORS[s.generation.prefix],
          "cloud.google.com/gke-tpu-topology": s.topology.split(":", 1)[1],
      },
      "containers": [{
          "name": "wsdjax",
          "image": image,
          "workingDir": CONTAINER_DIR,
          "command": command,
          "resources": {"limits": {"google.com/tpu": str(chips)}},
      }],
  }


def manifest(args, s, overrides: list[str]) -> dict:
  """The JobSet: `num_slices` Jobs of one pod a host, all restarted together on a failure."""
  host_count, _ = hosts(s)
  command = train_command(args.config, args.workdir, overrides)
  job = {"parallelism": host_count, "completions": host_count, "backoffLimit": 0,
         "template": {"spec": pod_spec(s, args.image, command)}}
  return {
      "apiVersion": "jobset.x-k8s.io/v1alpha2",
      "kind": "JobSet",
      "metadata": {"name": args.name, "annotations": {
          # one slice a node pool: no two Jobs share a slice's VMs
          "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
      "spec": {
          "failurePolicy": {"maxRestarts": args.max_restarts},
          # pods reachable by hostname: what TPU_WORKER_HOSTNAMES lists
          "network": {"enableDNSHostnames": True},
          "replicatedJobs": [{"name": "slice", "replicas": args.num_slices,
                              "template": {"spec": job}}],
      },
  }


def xpk_command(args, s, overrides: list[str]) -> list[str]:
  """`xpk workload create` for the same run; a trainer's non-zero exit (e.g. a peer host
  gone mid-step) restarts it too, not only an infrastructure failure."""
  command = shlex.join(train_command(args.config, args.workdir, overrides))
  return ["xpk", "workload", "create", f"--cluster={args.cluster}",
          f"--workload={args.name}", f"--docker-image={args.image}",
          f"--tpu-type={s.name}", f"--num-slices={args.num_slices}",
          f"--max-restarts={args.max_restarts}", "--restart-on-user-code-failure",
          f"--command={command}"]


def default_name(config: str) -> str:
  """A Kubernetes name from the config file's name: configs/paper_0.1b.py -> wsdjax-paper-0-1b."""
  stem = os.path.splitext(os.path.basename(config))[0]
  return ("wsdjax-" + re.sub(r"[^a-z0-9]+", "-", stem.lower())).strip("-")[:NAME_MAX].rstrip("-")


def check_args(args, overrides: list[str]) -> None:
  """Every flag checked before anything is written; fail() on the first bad one."""
  bad = [a for a in overrides if not a.startswith("--config.")]
  if bad:
    fail(f"arguments: unexpected {' '.join(bad)!r}; pass config overrides as "
         f"--config.a.b=value")
  if not args.workdir.startswith("gs://"):
    fail(f"--workdir: {args.workdir!r} is not on GCS, but a slice's hosts share nothing but "
         f"the network; pass --workdir gs://BUCKET/PATH")
  if args.max_restarts < 1:
    fail(f"--max-restarts: {args.max_restarts} is not a count >= 1; pass e.g. --max-restarts 50")
  if args.num_slices < 1:
    fail(f"--num-slices: {args.num_slices} is not a count >= 1; pass e.g. --num-slices 1")
  if not args.image.strip():
    fail("--image: empty; pass the image built from ./Dockerfile, e.g. "
         "us-docker.pkg.dev/PROJECT/REPO/wsdjax:latest")
  if not NAME_RE.match(args.name) or len(args.name) > NAME_MAX:
    fail(f"--name: {args.name!r} is not a Kubernetes name; use lowercase letters, digits and "
         f"'-', starting with a letter, at most {NAME_MAX} characters")
  if args.command == "xpk" and not args.cluster:
    fail("--cluster: missing; pass --cluster CLUSTER (the GKE cluster xpk created)")


def parser() -> argparse.ArgumentParser:
  """The command line: `manifest` or `xpk`, with the same run flags."""
  p = argparse.ArgumentParser(prog="launch/gke.py", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  sub = p.add_subparsers(dest="command", required=True)
  for name, text in (("manifest", "write a JobSet manifest for kubectl apply -f"),
                     ("xpk", "print the matching xpk workload create command")):
    c = sub.add_parser(name, help=text)
    c.add_argument("--accelerator-type", required=True, help="e.g. v5litepod-64, v4-64")
    c.add_argument("--config", required=True, help="config file, relative to the repo")
    c.add_argument("--workdir", required=True, help="gs://BUCKET/PATH shared by the hosts")
    c.add_argument("--image", required=True, help="container image built from ./Dockerfile")
    c.add_argument("--name", default="", help="JobSet / workload name (default: from --config)")
    c.add_argument("--max-restarts", type=int, default=50, help="restarts of the whole job")
    c.add_argument("--num-slices", type=int, default=1, help="slices (multislice over DCN)")
    if name == "manifest":
      c.add_argument("--output", default="", help="write the YAML here (default: stdout)")
    else:
      c.add_argument("--cluster", default="", help="the GKE cluster (xpk cluster create)")
  return p


def write(text: str, output: str) -> None:
  """`text` to the file `output`, or to stdout when it is empty."""
  if not output:
    sys.stdout.write(text)
    return
  try:
    with open(output, "w") as f:
      f.write(text)
  except OSError as e:
    fail(f"--output: cannot write {output!r} ({e.strerror}); pass a writable file path")
  print(f"# wrote {output}; submit it with: kubectl apply -f {output}", flush=True)


def main(argv: list[str] | None = None) -> int:
  args, overrides = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
  args.name = args.name or default_name(args.config)
  check_args(args, overrides)
  s = tpu_slice(args.accelerator_type)
  args.config = config_path(args.config)
  load_config(args.config, overrides, s.chips * args.num_slices)
  if args.command == "xpk":
    print(shlex.join(xpk_command(args, s, overrides)), flush=True)
    return 0
  import yaml  # PyYAML: a dependency of flax, orbax-checkpoint and ml-collections
  write(yaml.safe_dump(manifest(args, s, overrides), sort_keys=False), args.output)
  return 0


if __name__ == "__main__":
  sys.exit(main())
