"""Transparent huge pages for glibc malloc, where the environment is made.

XLA:CPU mallocs a step's temporaries afresh every step; with glibc's tunable
`glibc.malloc.hugetlb=1` malloc asks for transparent huge pages and a CPU step is faster
(measured in docs/performance.md, item 4). glibc reads tunables only when a process
starts, so the tunable is set by whoever starts the process: the Makefile (`make run`,
`make test`), the launchers (`launch/local.py` through `environment`, `launch/tpu_vm.py`),
or the user (README "Performance"). It helps only on Linux with glibc when the kernel's
THP mode is `madvise` (`wanted`); WSDJAX_HUGEPAGES=0 or a GLIBC_TUNABLES that already sets
it leaves the environment as it is. Standard library only.
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


def environment(environ=os.environ) -> dict:
  """`environ` with `glibc.malloc.hugetlb=1` added to GLIBC_TUNABLES where it helps
  (`wanted`): the environment the launchers give the processes they start."""
  env = dict(environ)
  if wanted(env):
    env["GLIBC_TUNABLES"] = tunables_with_hugepages(env.get("GLIBC_TUNABLES"))
  return env
