"""EMA shadows (train.ema_decays) and merges in the plan (schedule.merge_window): the
shadow is the bias-corrected EMA of the lineage's params, kept in the train state,
evaluated at every fork point and decayed checkpoint, listed as ema-<d>@<step> and restored
like any state; each budget gets merge-<B>, the weighted mean of main's saves in its
window. (Bitwise resume of the shadows: tests/integration/test_resume.py runs with one.)"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from wsdjax import checkpoint as ckpt
from wsdjax.training import ema
from wsdjax.schedule import merge_weights


cli = functools.partial(run_cli, timeout=600)


def test_shadow_is_the_normalised_exponential_average_of_the_params():
  decays = (0.9, 0.5)
  params = [{"w": jnp.full((3,), float(v))} for v in (4.0, -2.0, 7.0, 1.5, 3.0)]
  shadows = tuple({"w": jnp.full((3,), 123.0)} for _ in decays)  # the start gets no weight
  for t, p in enumerate(params, start=1):
    shadows = ema.update(shadows, p, jnp.asarray(t, jnp.int32), decays)
    for d, shadow in zip(decays, shadows):
      w = np.array([d ** (t - s) for s in range(1, t + 1)])
      want = (w * np.array([float(q["w"][0]) for q in params[:t]])).sum() / w.sum()
      np.testing.assert_allclose(np.asarray(shadow["w"]), want, rtol=1e-5)


def test_names_and_rules():
  assert ema.name(0.999) == "ema-0.999" and ema.decay_of("ema-0.999") == 0.999
  assert ema.decay_of("decay-100") is None and ema.decay_of("ema-x") is None
  assert ema.problem((0.9, 0.99)) is None and ema.problem(()) is None
  assert "(0, 1)" in ema.problem((0.9, 1.0)) and "repeats" in ema.problem((0.9, 0.9))
  assert "tuple" in ema.problem(0.9) and "(0, 1)" in ema.problem((True,))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """WSD, budgets 10 and 20 (forks at 8 and 16), two shadows, merges over 4-step windows."""
  workdir = tmp_path_factory.mktemp("ema")
  out = cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(workdir),
            "--config.model.seq_len=32", "--config.train.global_batch_size=8",
            "--config.schedule.name=wsd", "--config.schedule.budgets=(10,20)",
            "--config.schedule.decay_fraction=0.2", "--config.schedule.warmup_steps=2",
            "--config.checkpoint.every=5", "--config.train.ema_decays=(0.9,0.5)",
            "--config.schedule.merge_window=4", "--config.schedule.merge_every=2",
            "--config.schedule.merge_weights=linear")
  assert out.returncode == 0, out.stderr[-2000:]
  listed = json.loads(cli("wsdjax.branches", "--workdir", str(workdir), "--json").stdout)
  return workdir, out.stdout, {(e["branch"], e["step"]): e for e in listed}


def test_shadows_are_evaluated_at_forks_and_decays_listed_and_restored(run):
  workdir, stdout, listed = run
  shadows = sorted(k for k in listed if k[0].startswith("ema-"))
  held = [(8, "main"), (10, "decay-10"), (16, "main"), (20, "decay-20")]
  assert shadows == sorted((n, s) for n in ("ema-0.5", "ema-0.9") for s, _ in held)
  for step, source in held:
    entry = listed[("ema-0.9", step)]
    assert entry["source"] == {"branch": source, "step": step}
    assert entry["path"] == listed[(source, step)]["path"]
    holder = ckpt.restore(str(workdir), branch=source, step=step)
    restored = ckpt.restore(str(workdir), branch="ema-0.9", step=step)
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(holder.ema[0])):
      np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(holder.params), jax.tree.leaves(holder.ema[0])))
  assert "ema-0.9  (EMA of the params, decay 0.9)" in cli(
      "wsdjax.branches", "--workdir", str(workdir)).stdout
  assert "merges and EMA shadows at the budgets:" in stdout
  with pytest.raises(ckpt.CheckpointError, match="evaluated at steps"):
    ckpt.restore(str(workdir), branch="ema-0.9", step=12)
  with pytest.raises(ckpt.CheckpointError, match="no EMA shadow"):
    ckpt.restore(str(workdir), branch="ema-0.7")


def test_each_budget_gets_the_weighted_mean_of_mains_window(run):
  workdir, _, listed = run
  for budget in (10, 20):
    entry = listed[(f"merge-{budget}", budget)]
    sources = [budget - 2, budget]  # (B - 4, B] every 2 steps back from B
    assert entry["sources"] == sources and entry["added_flops"] == 0
    assert entry["merge_weights"] == "linear" and entry["window"] == 4
    weights = merge_weights.weights("linear", [s - (budget - 4) for s in sources], 4)
    np.testing.assert_allclose(entry["weights"], weights)
    assert entry["run_flops"] == listed[("main", budget)]["run_flops"]
    merged = ckpt.restore(str(workdir), branch=f"merge-{budget}")
    states = [ckpt.restore(str(workdir), branch="main", step=s) for s in sources]
    for leaf, *parts in zip(jax.tree.leaves(merged.params),
                            *(jax.tree.leaves(s.params) for s in states)):
      np.testing.assert_allclose(leaf, sum(w * p for w, p in zip(weights, parts)),
                                 rtol=1e-5, atol=1e-6)
