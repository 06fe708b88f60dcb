"""Transparent huge pages for glibc malloc, for the command-line programs.

XLA:CPU allocates a step's temporary buffers with malloc (about 1.2 GB for
`configs/small.py`); glibc serves such large blocks with fresh mmaps, so every step faults
them in again 4 KiB at a time: about 300,000 page faults and 1.1 CPU-s of kernel time per
step on a 2-core Zen 3. With glibc's tunable `glibc.malloc.hugetlb=1`, malloc asks the
kernel for transparent huge pages (madvise) and the same step takes about 1,000 faults and
0.2 CPU-s of kernel time: 3.65 s -> 3.03 s a step (docs/performance.md).

glibc reads tunables only when a process starts, so `reexec` restarts the program once
with the tunable added to GLIBC_TUNABLES (same pid, arguments and environment otherwise).
It does so only on Linux with glibc when the kernel's THP mode is `madvise` (with `always`
every large mapping gets huge pages anyway; with `never` nothing would change), and never
when GLIBC_TUNABLES already sets it or WSDJAX_HUGEPAGES=0. Standard library only: it runs
before jax is imported.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's THP mode ('always', 'madvise', 'never'), or None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def wanted(environ=os.environ, mode: str | None = None) -> bool:
  """Whether restarting with `glibc.malloc.hugetlb=1` would change anything here."""
  if environ.get("WSDJAX_HUGEPAGES", "1") == "0" or TUNABLE in environ.get("GLIBC_TUNABLES", ""):
    return False
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return False
  return (mode if mode is not None else thp_mode()) == "madvise"


def tunables_with_hugepages(current: str | None) -> str:
  """GLIBC_TUNABLES with `glibc.malloc.hugetlb=1` added (':'-separated)."""
  return ":".join(t for t in ((current or ""), f"{TUNABLE}=1") if t)


def reexec() -> None:
  """Restart this program (`python -m wsdjax.<cli> ...`) with huge pages, if `wanted`.

  Call it first thing in a CLI's `__main__` block; it does not return when it restarts.
  """
  if not wanted():
    return
  env = dict(os.environ, GLIBC_TUNABLES=tunables_with_hugepages(os.environ.get("GLIBC_TUNABLES")))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)


if __name__ == "__main__":
  # `python -m wsdjax.runtime.hugepages`: restart as the CLIs do and print the tunables in effect.
  reexec()
  print(os.environ.get("GLIBC_TUNABLES", ""))
