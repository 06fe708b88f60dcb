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
