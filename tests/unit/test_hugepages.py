"""Tests of wsdjax.runtime.hugepages: where glibc.malloc.hugetlb=1 helps, and that the
environment the launchers and the Makefile make adds it once."""

import os
import sys

import pytest

from conftest import REPO
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


@pytest.mark.parametrize("given, expected", [
    ({}, "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "glibc.malloc.hugetlb=0"),  # the user's
])
def test_the_launchers_environment_adds_the_tunable_once(monkeypatch, given, expected):
  monkeypatch.setattr(H, "thp_mode", lambda path=H.THP_MODE_FILE: "madvise")
  if not H.wanted({}):
    pytest.skip("not glibc on Linux: the tunable means nothing here")
  env = H.environment(dict(given, PATH="/bin"))
  assert env["GLIBC_TUNABLES"] == expected and env["PATH"] == "/bin"
  assert H.environment({"WSDJAX_HUGEPAGES": "0"}) == {"WSDJAX_HUGEPAGES": "0"}


def test_no_command_restarts_the_interpreter():
  """The tunable is set where the environment is made (Makefile, launchers), not by a
  command re-executing itself."""
  for name in os.listdir(os.path.join(REPO, "wsdjax")):
    if name.endswith(".py"):
      with open(os.path.join(REPO, "wsdjax", name)) as f:
        source = f.read()
      assert "execv" not in source and "reexec" not in source, name
  with open(os.path.join(REPO, "Makefile")) as f:
    makefile = f.read()
  assert "HUGEPAGES := GLIBC_TUNABLES=" in makefile and "glibc.malloc.hugetlb=1" in makefile
  assert "$(HUGEPAGES) $(PY) -m wsdjax.train" in makefile.split("\nrun:")[1].split("\n\n")[0]
