"""The sharded trainer: shardings of the state, equality across meshes, gradient
accumulation, one compile per schedule, learning the bigram task, the CLI's artifacts."""

import json
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import one_device_mesh, run_cli
from wsdjax import data as data_lib
from wsdjax.model import transformer as model_lib
from wsdjax.schedule import plan as plan_lib
from wsdjax.runtime import sharding
from wsdjax.training import steps
from wsdjax.training import trainer
from wsdjax.schedule.plan import StateRef

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


def sharded_config(tiny_config, layout):
  c = tiny_config
  c.model.update(d_model=64, n_heads=8, n_kv_heads=8, d_ff=128, vocab_size=64, seq_len=16)
  c.mesh.update(data=layout[0], fsdp=layout[1], tensor=layout[2])
  c.schedule.update(name="constant", budgets=(3,), warmup_steps=0, peak_lr=1e-2)
  return c


def run_steps(cfg, mesh, n):
  state = trainer.init_state(cfg, mesh)
  compiled = steps.StepCache(cfg, mesh, model_lib.build_model(cfg.model))
  seg = plan_lib.make_plan(cfg.schedule).segments[0]
  step = compiled.train(seg.schedule, donate=True)
  pipeline = data_lib.build_pipeline(cfg, process_index=0, process_count=1)
  it = pipeline.train_iterator(0)
  losses = []
  for _ in range(n):
    batch = data_lib.to_global(next(it), sharding.batch_sharding(mesh))
    state, m = step(state, batch)
    losses.append(float(m["train_loss"]))
  it.close()
  eval_batch = data_lib.to_global(pipeline.eval_batches()[0], sharding.batch_sharding(mesh))
  losses.append(float(compiled.eval()(state.params, eval_batch)))
  return state, losses


_ONE_DEVICE_LOSSES: list[float] = []  # the 1x1x1 reference run, shared by the layouts


@needs_8
# (2, 4, 1) is covered at the model level in tests/unit/test_sharding.py.
@pytest.mark.parametrize("layout", [(8, 1, 1), (2, 2, 2), (1, 1, 8)])
def test_sharded_state_and_loss_match_one_device(tiny_config, layout):
  cfg = sharded_config(tiny_config, layout)
  mesh = sharding.make_mesh(cfg.mesh)
  state, losses = run_steps(cfg, mesh, 3)
  specs = jax.tree.map(lambda a: a.sharding.spec, state)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): spec for path, spec in
          jax.tree_util.tree_flatten_with_path(
              specs.params, is_leaf=lambda x: isinstance(x, P))[0]}
  # The default logical rules (scanned layers first; axes of size 1 keep their names).
  assert flat["embed/embedding"] == P("tensor", "fsdp")
  assert flat["layers/mlp/gate"] == P(None, "fsdp", "tensor")
  assert flat["layers/mlp/down"] == P(None, "tensor", "fsdp")
  assert flat["layers/attn/query"] == P(None, "fsdp", "tensor", None)
  assert flat["layers/attn/out"] == P(None, "tensor", None, "fsdp")
  assert flat["final_norm/scale"] in (P(None), P())
  # Adam moments are sharded exactly like their params; scalars are replicated.
  adam = [x for x in jax.tree_util.tree_leaves(
      specs.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(x, "mu")]
  assert len(adam) == 1
  is_spec = lambda x: isinstance(x, P)  # noqa: E731
  assert jax.tree.leaves(adam[0].mu, is_leaf=is_spec) == jax.tree.leaves(specs.params,
                                                                          is_leaf=is_spec)
  assert jax.tree.leaves(adam[0].nu, is_leaf=is_spec) == jax.tree.leaves(specs.params,
                                                                          is_leaf=is_spec)
  assert specs.step == P() and adam[0].count == P()
  # ... and the arrays really are split over the devices the rules name.
  emb = state.params["embed"]["embedding"]
  assert len(emb.addressable_shards) == 8
  assert emb.addressable_shards[0].data.shape == (64 // layout[2], 64 // layout[1])
  if not _ONE_DEVICE_LOSSES:
    _ONE_DEVICE_LOSSES.extend(
        run_steps(sharded_config(tiny_config, (1, 1, 1)), one_device_mesh(), 3)[1])
  np.testing.assert_allclose(losses, _ONE_DEVICE_LOSSES, rtol=1e-5)


@pytest.mark.parametrize("k", [4])
def test_micro_batches_equal_one_big_step(tiny_config, k):
  cfg = sharded_config(tiny_config, (1, 1, 1))
  mesh = one_device_mesh()
  params = trainer.init_state(cfg, mesh).params
  model = model_lib.build_model(cfg.model)
  pipeline = data_lib.build_pipeline(cfg, process_index=0, process_count=1)
  batch = jnp.asarray(next(pipeline.train_iterator(0)))
  grads_of = jax.jit(steps.loss_and_grads, static_argnames=("model", "micro_batches"))
  loss1, g1 = grads_of(params, batch, model=model, micro_batches=1)
  lossk, gk = grads_of(params, batch, model=model, micro_batches=k)
  np.testing.assert_allclose(float(lossk), float(loss1), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(gk)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)
  # And the whole step: k micro-batches give the same loss and grad norm as one batch.
  cfg.train.micro_batches = k
  _, losses_k = run_steps(cfg, mesh, 2)
  cfg.train.micro_batches = 1
  _, losses_1 = run_steps(cfg, mesh, 2)
  np.testing.assert_allclose(losses_k, losses_1, rtol=1e-5)


def test_train_step_compiles_once_per_schedule(tiny_config, tmp_path, caplog):
  tiny_config.schedule.budgets = (20, 40)
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      t = trainer.Trainer(tiny_config, str(tmp_path), mesh=one_device_mesh())
      t.run()
  finally:
    jax.config.update("jax_log_compiles", False)
  # WSD-S: one schedule for the whole lineage -> one train step and one eval step.
  assert t.steps.compiles == 2
  compiled_train = [r for r in caplog.records if "train_step" in r.getMessage()
                    and "ompil" in r.getMessage() and "cache hit" not in r.getMessage()]
  assert 1 <= len(compiled_train) <= 2, [r.getMessage() for r in compiled_train]
  # Each decayed checkpoint's manifest entry records the budget it serves: WSD-S's second
  # decay ends at C_2 = 40 + the first decay (2 steps) and serves budget 40.
  assert [(r["branch"], r["step"], r["budget"]) for r in t.summary()] == [
      ("decay-20", 20, 20), ("decay-42", 42, 40)]
  assert t.tree.entry(StateRef("decay-42", 42))["budget"] == 40
  t.tree.close()


def test_loss_falls_toward_the_bigram_optimum(tiny_config, tmp_path):
  tiny_config.schedule.budgets = (60,)
  tiny_config.schedule.name = "cosine"
  t = trainer.Trainer(tiny_config, str(tmp_path), mesh=one_device_mesh())
  initial = t.eval_loss(trainer.init_state(tiny_config, t.mesh).params)
  rows = t.run()
  h = t.data.entropy_rate
  final = rows[-1]["eval_loss"]
  assert initial > np.log(64) - 0.2
  assert final < initial
  # At least 60% of the way from the uniform predictor to the chain's entropy rate.
  assert final - h < 0.4 * (initial - h), (initial, final, h)
  t.tree.close()


def test_cli_tiny_runs_as_written_and_leaves_logs(tmp_path):
  workdir = tmp_path / "run"
  proc = run_cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "decayed checkpoints" in out and "decay-40" in out and "decay-84" in out
  assert re.search(r"decay-84\s+80\s+84\s", out), out  # branch, the budget it serves, step
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train_loss" in r]
  assert train_rows and {"step", "train_loss", "lr", "grad_norm", "tokens_per_s",
                         "mfu"} <= set(train_rows[0])
  assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
  tb = list((workdir / "tb").iterdir())
  assert any(p.name.startswith("events.out.tfevents") for p in tb)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["schedule"]["budgets"] == [40, 80]


def test_rewritten_file_keeps_earlier_rows_and_writes_on_schedule(tmp_path):
  """The gs:// JSONL writer (object stores cannot append), exercised on a local path."""
  from wsdjax.training.metrics import RewrittenFile
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n')
  f = RewrittenFile(path, every_s=3600)
  f.write('{"step": 2}\n')
  f.flush()
  assert path.read_text() == '{"step": 1}\n'  # not yet due
  f.close()
  assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
  g = RewrittenFile(path, every_s=0)
  g.write('{"step": 3}\n')
  g.flush()
  assert path.read_text().splitlines()[-1] == '{"step": 3}'


def test_log_rows_are_clu_means_of_their_window(tiny_config, tmp_path):
  """A log row's loss and gradient norm are the means over the steps since the last row
  (clu.metrics), its LR the last update's; the run prints clu's parameter table first."""
  rows = {}
  for every in (1, 4):
    cfg = tiny_config.copy_and_resolve_references()
    cfg.schedule.update(name="constant", budgets=(8,), warmup_steps=4)
    cfg.train.log_every = every
    stream = __import__("io").StringIO()
    trainer.train_and_evaluate(cfg, str(tmp_path / str(every)), mesh=one_device_mesh(),
                               stream=stream)
    lines = [json.loads(l) for l in (tmp_path / str(every) / "metrics.jsonl").open()]
    rows[every] = {r["step"]: r for r in lines if "train_loss" in r}
  assert "| layers/mlp/gate" in stream.getvalue() and "Total: " in stream.getvalue()
  for end in (4, 8):
    window = [rows[1][s] for s in range(end - 3, end + 1)]
    for key in ("train_loss", "grad_norm"):
      assert rows[4][end][key] == pytest.approx(np.mean([r[key] for r in window]), rel=1e-6)
    assert rows[4][end]["lr"] == rows[1][end]["lr"]
  assert rows[4][4]["lr"] != rows[1][1]["lr"]  # warmup: the window's last LR, not its first
