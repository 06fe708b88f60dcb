"""Tests of wsdjax.runtime.hugepages: when the CLIs restart themselves with glibc.malloc.hugetlb=1,
and that the restart keeps the command and adds the tunable once."""

import os
import sys

import pytest

from conftest import REPO, run_cli
from wsdjax.runtime import hugepages as H


def test_thp_mode_parses_the_kernel_file(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert H.thp_mode(str(f)) == "madvise"
  f.write_text("[always] madvise never\n")
  assert H.thp_mode(str(f)) == "always"
  assert H.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux's")
def test_wanted_only_where_it_changes_something():
  assert H.wanted({}, mode="madvise") == (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith(
      "glibc")
  assert not H.wanted({}, mode="always")  # every large mapping already gets huge pages
  assert not H.wanted({}, mode="never")
  assert not H.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, mode="madvise")
  assert not H.wanted({"WSDJAX_HUGEPAGES": "0"}, mode="madvise")
  assert H.tunables_with_hugepages(None) == "glibc.malloc.hugetlb=1"
  assert H.tunables_with_hugepages("glibc.malloc.arena_max=2") == (
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


@pytest.mark.skipif(not H.wanted({}), reason="this host would not restart (no glibc/madvise THP)")
@pytest.mark.parametrize("given, expected", [
    ("", "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # the user's choice is kept
])
def test_reexec_adds_the_tunable_once(given, expected):
  env = dict(os.environ, GLIBC_TUNABLES=given, PYTHONPATH=REPO)
  out = run_cli("wsdjax.runtime.hugepages", env=env, timeout=60)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == expected
