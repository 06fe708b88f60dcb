"""Cloud TPU slices by their gcloud accelerator type: topology, chips, HBM and peak FLOP/s.

A slice name is what `gcloud compute tpus tpu-vm create --accelerator-type` takes:
  v4-N, v5p-N      N = 2 x chips (TensorCores; two per chip, used as one "megacore")
  v5litepod-N      N = chips (also written v5e-N); v6e-N: N = chips
`lookup(name)` turns it into libtpu's topology description (`v4:4x4x2`, `v5e:8x8`), which
`jax.experimental.topologies.get_topology_desc` compiles for on any host, TPU or not.

Usable HBM per chip is what libtpu's compiler allows a program (its "exceeds available HBM"
limit, read on libtpu 0.0.42.1): a little under the chip's physical HBM. Peak FLOP/s are
Google's published dense bfloat16 numbers per chip; ICI bandwidth is the published
bidirectional inter-chip bandwidth per chip (v5e 400, v5p 1200, v6e 800 GB/s; v4: six links
of 400 Gbit/s each way = 600 GB/s).
"""

from __future__ import annotations

import dataclasses
import math

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation: how its slices are named and what one chip has."""
  prefix: str            # accelerator-type prefix, e.g. 'v5litepod'
  topology_prefix: str   # libtpu's name, e.g. 'v5e'
  cores_per_unit: int    # N in '<prefix>-N' counts chips (1) or TensorCores (2)
  megacore: bool         # two TensorCores per chip used as one device
  hbm_bytes: int         # usable HBM per chip
  peak_flops: float      # dense bf16 FLOP/s per chip
  ici_bytes_per_s: float  # bidirectional inter-chip bandwidth per chip (half each way)
  shapes: dict           # chips -> topology dims, the shapes gcloud offers


def _dims(*shapes: str) -> dict:
  return {math.prod(int(d) for d in s.split("x")): s for s in shapes}


_3D = _dims("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8",
            "8x8x16", "8x16x16")
_2D = _dims("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")

GENERATIONS = (
    Generation("v4", "v4", 2, True, int(30.75 * GIB), 275e12, 600e9, _3D),
    Generation("v5p", "v5p", 2, True, int(95.74 * GIB), 459e12, 1200e9, _3D),
    Generation("v5litepod", "v5e", 1, False, int(15.75 * GIB), 197e12, 400e9, _2D),
    Generation("v6e", "v6e", 1, False, int(31.25 * GIB), 918e12, 800e9, _2D),
)
ALIASES = {"v5e": "v5litepod"}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A slice of `chips` chips of one generation, as libtpu's topology `topology`."""
  name: str
  generation: Generation
  chips: int
  topology: str

  @property
  def chip_config(self) -> str | None:
    return "megacore" if self.generation.megacore else None

  @property
  def hbm_bytes(self) -> int:
    return self.generation.hbm_bytes

  @property
  def peak_flops(self) -> float:
    return self.generation.peak_flops

  @property
  def send_bytes_per_s(self) -> float:
    """What one chip can send per second over all its ICI links (half the bidirectional)."""
    return self.generation.ici_bytes_per_s / 2


class UnknownSlice(ValueError):
  """A name that is no Cloud TPU accelerator type this module knows."""


def names() -> list[str]:
  """Every slice name `lookup` accepts, smallest first within each generation."""
  return [f"{g.prefix}-{chips * g.cores_per_unit}" for g in GENERATIONS
          for chips in sorted(g.shapes)]


def lookup(name: str) -> Slice:
  """The Slice for a gcloud accelerator type such as 'v4-64' or 'v5litepod-16'."""
  prefix, _, count = name.strip().lower().rpartition("-")
  prefix = ALIASES.get(prefix, prefix)
  gen = next((g for g in GENERATIONS if g.prefix == prefix), None)
  if gen is None or not count.isdigit() or int(count) % gen.cores_per_unit:
    raise UnknownSlice(f"--topology: unknown TPU slice {name!r}; use a Cloud TPU "
                       f"accelerator type such as v4-64, v5litepod-64 (v5e-64), v5p-8 or "
                       f"v6e-8 (--list shows them all)")
  chips = int(count) // gen.cores_per_unit
  if chips not in gen.shapes:
    sizes = ", ".join(f"{prefix}-{c * gen.cores_per_unit}" for c in sorted(gen.shapes))
    raise UnknownSlice(f"--topology: {name!r} is not a slice size Cloud TPU offers; "
                       f"use one of {sizes}")
  return Slice(f"{gen.prefix}-{int(count)}", gen, chips,
               f"{gen.topology_prefix}:{gen.shapes[chips]}")


def topology_devices(s: Slice) -> list:
  """The slice's abstract TPU devices, from libtpu (no TPU needed; one per chip)."""
  from jax.experimental import topologies

  kwargs = {"chip_config_name": s.chip_config} if s.chip_config else {}
  topo = topologies.get_topology_desc(platform="tpu", topology_name=s.topology, **kwargs)
  return list(topo.devices)
