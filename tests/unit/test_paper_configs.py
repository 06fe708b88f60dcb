"""The WSD-S paper's model configs (configs/paper_*.py) and configs/gpt2_124m.py: sizes
match their names, schedules match the paper, and the FSDP shardings fit a v4-64 (32
chips) or a v5e-64 (64 chips) without any device: `jax.eval_shape` for shapes and a
`jax.sharding.AbstractMesh` for shardings."""

import functools
import importlib.util
import math
import os

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType

from conftest import REPO
from wsdjax import config as config_lib
from wsdjax.model import transformer as model_lib
from wsdjax.schedule import plan as plan_lib
from wsdjax.runtime import sharding
from wsdjax.training import state as train_state

PAPER = {"paper_0.1b": 0.1e9, "paper_0.3b": 0.3e9, "paper_0.6b": 0.6e9, "paper_1.2b": 1.2e9}
POD_CHIPS = {"v4-64": 32, "v5e-64": 64}
HBM_GIB = {"v4-64": 32, "v5e-64": 16}


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@functools.lru_cache(maxsize=None)
def abstract(name):
  return train_state.abstract_state(load(name))


def non_embedding(params) -> int:
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return sum(math.prod(x.shape) for path, x in leaves
             if not any(getattr(k, "key", None) in ("embed", "lm_head") for k in path))


def pod_mesh(chips):
  return AbstractMesh((1, chips, 1), ("data", "fsdp", "tensor"),
                      axis_types=(AxisType.Auto,) * 3)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_size_and_schedule(name):
  cfg = load(name)
  config_lib.validate(cfg)
  state = abstract(name)
  n = non_embedding(state.params)  # the size a model's name counts (no vocab tables)
  assert n == model_lib.param_count(cfg.model, include_embedding=False)
  assert abs(n / PAPER[name] - 1) <= 0.15, (name, n)
  assert (cfg.model.seq_len, cfg.train.global_batch_size) == (4096, 1024)
  s = cfg.schedule
  assert (s.name, tuple(s.budgets), s.decay_fraction, s.min_lr_ratio) == (
      "wsd_s", (12500, 25000, 50000), 0.1, 0.1)
  assert cfg.optimizer.weight_decay == 0.1 and s.peak_lr > 0
  # Decayed checkpoints after 50B, 100B, 200B tokens of budget (WSD-S decays in place).
  plan = plan_lib.make_plan(s)
  assert [seg.end for seg in plan.decayed] == [12500, 25000 + 1250, 50000 + 1250 + 2500]
  tokens = cfg.train.global_batch_size * cfg.model.seq_len
  assert [b * tokens / 1e9 for b in s.budgets] == pytest.approx([52.4, 104.9, 209.7], rel=1e-3)


@pytest.mark.parametrize("pod", sorted(POD_CHIPS))
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_shards_over_a_pod(name, pod):
  chips = POD_CHIPS[pod]
  cfg = load(name)
  config_lib.validate(cfg, chips)  # batch, micro-batches and heads divide the mesh
  mesh = pod_mesh(chips)
  shardings = train_state.state_shardings(cfg, mesh)
  state = abstract(name)
  assert sharding.mesh_shape(cfg.mesh, chips) == (1, chips, 1)  # FSDP over every chip
  per_chip = 0
  for x, sh in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
    shard = sh.shard_shape(x.shape)
    size = math.prod(x.shape)
    if size >= 1 << 20:  # every large array (weights, Adam moments) is split over the pod
      assert math.prod(shard) * chips == size, (name, x.shape, sh.spec)
    per_chip += math.prod(shard) * np.dtype(x.dtype).itemsize
  # Params + Adam moments in float32: a small part of a chip's memory, leaving the rest
  # to activations (remat on) and XLA.
  assert per_chip < 0.25 * HBM_GIB[pod] * 2**30, (name, pod, per_chip / 2**30)


def test_each_slice_gets_its_own_micro_batch_count():
  """`train.chip_batch_size` (sequences a chip processes at once) sets the micro-batches per
  mesh: a v4-64 (32 chips) runs twice the micro-batches of a v5e-64 (64 chips); without it
  train.micro_batches holds on any mesh."""
  expected = {"paper_0.1b": (2, 4), "paper_0.3b": (8, 16), "paper_0.6b": (8, 16),
              "paper_1.2b": (16, 32)}
  for name, counts in expected.items():
    cfg = load(name)
    assert tuple(config_lib.micro_batches(cfg.train, chips) for chips in (64, 32)) == counts
    for chips in (32, 64):
      k = config_lib.micro_batches(cfg.train, chips)
      assert k * chips * cfg.train.chip_batch_size == cfg.train.global_batch_size
  cfg = load("paper_0.1b")
  cfg.train.chip_batch_size, cfg.train.micro_batches = 0, 4
  assert config_lib.micro_batches(cfg.train, 32) == config_lib.micro_batches(cfg.train, 64) == 4
  cfg.train.chip_batch_size = 3
  with pytest.raises(config_lib.ConfigError, match="train.chip_batch_size: 3 sequences"):
    config_lib.validate(cfg, 64)


@pytest.mark.parametrize("layout", [(1, 64, 1), (2, 32, 1)])
def test_fsdp_minimum_of_paper_1_2b(layout):
  """The floor `wsdjax.aot` holds a program against, counted by hand for paper_1.2b: per
  micro-batch every sharded weight gathered in bfloat16 for the forward and the backward
  pass (the embedding table once), every gradient reduce-scattered in float32 over 'fsdp',
  and all-reduced over 'data' (and the replicated norm scales' over every device); eval
  gathers every weight once."""
  from wsdjax.runtime.tpu import fsdp
  cfg = load("paper_1.2b")
  data, shards, _ = layout
  cfg.mesh.data, cfg.mesh.fsdp = data, shards
  mesh = AbstractMesh(layout, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  params = train_state.abstract_state(cfg, mesh).params
  m = cfg.model
  norms = (2 * m.n_layers + 1) * m.d_model  # replicated: nothing to move
  weights = model_lib.param_count(m) - norms
  table = m.vocab_size * m.d_model
  ring, k = (shards - 1) / shards, 16
  floor = fsdp.minimum(params, dict(zip(("data", "fsdp", "tensor"), layout)), np.dtype("bfloat16"),
                       k, tied=False)
  assert floor.train["all-gather"] == pytest.approx(k * ring * 2 * (2 * weights - table))
  assert floor.train["reduce-scatter"] == pytest.approx(k * ring * 4 * weights)
  everywhere = data * shards  # replicated norm scales: all-reduced over every device
  assert floor.train["all-reduce"] == pytest.approx(k * 2 * 4 * (
      (data - 1) / data * weights / shards + (everywhere - 1) / everywhere * norms))
  assert floor.eval == pytest.approx({"all-gather": ring * 2 * weights})
  if layout == (1, 64, 1):  # the estimate: 16 x (2 x 2.4 + 4.8) GB ~ 154 GB
    assert 150e9 < floor.train_total < 175e9


def test_gpt2_124m_config():
  cfg = load("gpt2_124m")
  for gpus in (1, 2, 4, 8):
    config_lib.validate(cfg, gpus)
  m = cfg.model
  assert (m.n_layers, m.d_model, m.n_heads, m.d_ff, m.seq_len, m.dtype) == (
      12, 768, 12, 3072, 1024, "bfloat16")
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract("gpt2_124m").params))
  assert n == model_lib.param_count(m) and abs(n / 124e6 - 1) <= 0.15
  assert "126" in model_lib.describe(m) or "125" in model_lib.describe(m)
