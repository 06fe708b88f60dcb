"""Merged branches (wsdjax.merge): the weighted mean of main's saves in a window, written
to the tree as merge-<STEP> beside real decays, listed and restored like any state; the
weights of each shape; bad input as one line, exit 2, nothing written."""

import hashlib
import json
import math

import jax
import numpy as np
import pytest

from conftest import run_cli as cli
from wsdjax import checkpoint as ckpt
from wsdjax.schedule import merge_weights


def snapshot(workdir) -> dict:
  return {str(p.relative_to(workdir)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A constant-LR tiny run with main saved every 2 steps up to 12 (all kept)."""
  workdir = tmp_path_factory.mktemp("merge")
  out = cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(workdir),
            "--config.model.seq_len=32", "--config.train.global_batch_size=8",
            "--config.schedule.name=constant", "--config.schedule.budgets=(12,)",
            "--config.schedule.warmup_steps=2", "--config.checkpoint.every=2",
            "--config.checkpoint.keep=100")
  assert out.returncode == 0, out.stderr[-2000:]
  return workdir


@pytest.mark.parametrize("shape", merge_weights.NAMES)
def test_merge_weights_sum_to_one_and_mirror_the_decay(shape):
  w = merge_weights.weights(shape, [2, 4, 6, 8], 8)
  assert math.isclose(sum(w), 1.0, rel_tol=1e-6) and all(x > 0 for x in w)
  if shape in ("uniform", "linear"):  # equally spaced: a linear decay is the plain mean
    np.testing.assert_allclose(w, [0.25] * 4, rtol=1e-6)
  if shape in ("1-sqrt", "exponential"):  # fast early decay: the earliest save weighs most
    assert w[0] == max(w)


def test_merge_writes_the_weighted_mean_lists_and_restores_it(run):
  out = cli("wsdjax.merge", "--workdir", str(run), "--at", "12", "--window", "6",
            "--weights", "1-sqrt")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith("merge-12: 1-sqrt average of main@8 x ")
  listed = json.loads(cli("wsdjax.branches", "--workdir", str(run), "--json").stdout)
  entry = next(e for e in listed if e["branch"] == "merge-12")
  assert entry["sources"] == [8, 10, 12] and entry["merged"] and entry["added_flops"] == 0
  weights = merge_weights.weights("1-sqrt", [2, 4, 6], 6)
  np.testing.assert_allclose(entry["weights"], weights)
  main12 = next(e for e in listed if (e["branch"], e["step"]) == ("main", 12))
  assert entry["run_flops"] == main12["run_flops"] and math.isfinite(entry["eval_loss"])
  merged = ckpt.restore(str(run), "merge-12")
  sources = [ckpt.restore(str(run), "main", s) for s in (8, 10, 12)]
  expected = jax.tree.map(lambda *ps: sum(w * np.asarray(p) for w, p in zip(weights, ps)),
                          *[s.params for s in sources])
  for a, b in zip(jax.tree.leaves(merged.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-7)
  assert int(merged.step) == 12  # with main@12's step and optimizer state
  for a, b in zip(jax.tree.leaves(merged.opt_state), jax.tree.leaves(sources[-1].opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  tree = cli("wsdjax.branches", "--workdir", str(run)).stdout
  assert "merge-12  (from main@12)" in tree


@pytest.mark.parametrize("args, start", [
    (["--at", "11", "--window", "6"], "wsdjax: --at: main has no saved state at step 11; "
                                      "use a saved main step, e.g. 8, 10, 12"),
    (["--at", "12", "--window", "2"], "wsdjax: --window: the window (10, 12] holds 1 saved"),
    (["--at", "12", "--window", "6", "--weights", "square"], "wsdjax: --weights: unknown"),
    (["--at", "12"], "wsdjax: --window: must be a positive number of steps"),
    (["--at", "0", "--window", "4"], "wsdjax: --at: must be a saved main step"),
    (["--at", "12", "--window", "6"], "wsdjax: --at: branch merge-12 already exists"),
])
def test_bad_merge_arguments_are_one_line_and_write_nothing(run, args, start):
  before = snapshot(run)
  out = cli("wsdjax.merge", "--workdir", str(run), *args)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert lines == [lines[0]] and lines[0].startswith(start), lines
  assert snapshot(run) == before
