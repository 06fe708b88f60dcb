"""Whether this host has TPU chips, and keeping libtpu quiet where it has none.

With libtpu installed (`pip install -e '.[tpu]'`, which `make test` does to compile TPU
programs), jax tries the TPU backend first and, on a host without TPU chips, prints
libtpu's warnings before it falls back to the CPU. Every command calls
`cpu_only_without_tpu()` as it starts (`runtime.cli.run`), and so does the test suite
(tests/conftest.py), so a run on a laptop or CI machine prints nothing extra.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips appear on PCI with Google's vendor id


def has_tpu_chips(sys_root: str = "/") -> bool:
  """Whether TPU chips are attached: a PCI device of Google's vendor id, or /dev/accel*."""
  root = sys_root.rstrip("/")
  for vendor in glob.glob(f"{root}/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor) as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return bool(glob.glob(f"{root}/dev/accel*"))


def installed(module: str) -> bool:
  """Whether `module` can be imported (found without importing it)."""
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def cpu_only_without_tpu(env=None, sys_root: str = "/") -> bool:
  """Set JAX_PLATFORMS=cpu when libtpu is installed but this host has no TPU chips and
  nothing else was chosen (JAX_PLATFORMS unset, no CUDA plugin installed). Returns whether
  it set it. Must run before jax initialises a backend (jax may be imported already)."""
  env = os.environ if env is None else env
  if "JAX_PLATFORMS" in env or not installed("libtpu"):
    return False
  if any(installed(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm_plugin")):
    return False
  if has_tpu_chips(sys_root):
    return False
  env["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules and env is os.environ:  # jax read JAX_PLATFORMS at its import
    sys.modules["jax"].config.update("jax_platforms", "cpu")
  return True
