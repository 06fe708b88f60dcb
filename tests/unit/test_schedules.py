"""Tests of wsdjax/schedule/builders.py: every formula at boundaries and inside, exactness near
2**31, the WSD-S paper run, Optax agreement, bad arguments, configs, phases and the CLI."""

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import numpy.testing as npt
import optax
import pytest

from conftest import REPO, run_cli
from wsdjax.runtime.errors import ConfigError
from wsdjax.schedule import builders as sch
from wsdjax.schedule import spec as spec_lib
from wsdjax.schedule.spec import ScheduleSpec

TOP = 2**31 - 1  # the largest int32 step
RTOL = 1e-6


def lr(schedule, steps):
  return np.asarray(schedule(jnp.asarray(steps, jnp.int32)))


def check(schedule, expected: dict):
  """schedule(t) == expected[t] for every t, to rtol 1e-6 (exact zeros stay exact)."""
  steps = list(expected)
  npt.assert_allclose(lr(schedule, steps), [expected[t] for t in steps], rtol=RTOL, atol=0)


def section(**fields) -> ml_collections.ConfigDict:
  """A `schedule` config section with the field names of configs/default.py."""
  s = dict(name="wsd_s", peak_lr=3e-3, warmup_steps=30, budgets=(150, 300, 600),
           decay_fraction=0.1, decay_steps=0, init_lr=0.0, min_lr_ratio=0.1,
           warmup_shape="linear", decay_shape="linear", rewarmup_steps=0)
  s.update(fields)
  return ml_collections.ConfigDict(s)


# ---- warmup shapes: init 0.5 -> peak 2 over W = 100 ----
WARMUPS = {
    "linear": {0: 0.5, 25: 0.875, 50: 1.25, 99: 1.985, 100: 2.0, 10**6: 2.0},
    "constant": {0: 0.5, 50: 0.5, 99: 0.5, 100: 2.0, 101: 2.0},
    # 0.5 * 4^q
    "exponential": {0: 0.5, 25: 0.5 * math.sqrt(2), 50: 1.0, 99: 0.5 * 4**0.99, 100: 2.0},
    # 0.5 + 1.5 (1 - cos(pi q)) / 2
    "cosine": {0: 0.5, 25: 0.5 + 0.75 * (1 - math.sqrt(0.5)), 50: 1.25,
               99: 0.5 + 0.75 * (1 - math.cos(0.99 * math.pi)), 100: 2.0},
}


@pytest.mark.parametrize("shape", sch.WARMUP_SHAPES)
def test_warmup_shapes(shape):
  check(sch.constant(peak_lr=2.0, warmup_steps=100, init_lr=0.5, warmup_shape=shape),
        WARMUPS[shape])


# ---- decay shapes: 2 -> 0.5 over [600, 1000), p = (t - 600) / 400 ----
DECAYS = {
    "linear": {700: 1.625, 800: 1.25, 999: 0.5 + 1.5 / 400},
    # 0.5 + 1.5 (1 + cos(pi p)) / 2
    "cosine": {700: 0.5 + 0.75 * (1 + math.sqrt(0.5)), 800: 1.25,
               999: 0.5 + 0.75 * (1 + math.cos(math.pi * 399 / 400))},
    # 0.5 + 1.5 (1 - sqrt p)
    "1-sqrt": {700: 1.25, 800: 0.5 + 1.5 * (1 - math.sqrt(0.5)),
               999: 0.5 + 1.5 * (1 - math.sqrt(399 / 400))},
    # 2 * 0.25^p
    "exponential": {700: math.sqrt(2), 800: 1.0, 999: 2 * 0.25**(399 / 400)},
}


@pytest.mark.parametrize("shape", sch.DECAY_SHAPES)
def test_decay_shapes(shape):
  s = sch.wsd(peak_lr=2.0, total_steps=1000, warmup_steps=0, decay_steps=400,
              min_lr_ratio=0.25, decay_shape=shape)
  check(s, {0: 2.0, 599: 2.0, 600: 2.0, **DECAYS[shape], 1000: 0.5, 10**9: 0.5})


def test_wsd_with_warmup_and_decay_fraction():
  s = sch.wsd(peak_lr=1e-3, total_steps=1000, warmup_steps=100)  # D = round(0.1 * 1000)
  check(s, {0: 0.0, 50: 5e-4, 99: 9.9e-4, 100: 1e-3, 899: 1e-3, 900: 1e-3, 950: 5e-4,
            999: 1e-5, 1000: 0.0, 5000: 0.0})
  assert [p.name for p in s.phases] == ["warmup", "stable", "decay", "floor"]


def test_decay_lengths_use_python_round():
  assert sch.decay_lengths((25, 35, 1000), 0.1) == [round(2.5), round(3.5), 100] == [2, 4, 100]
  assert sch.wsd(1.0, 25, 0).phases[-2].start == 23  # D = round(2.5) = 2


def test_linear_matches_transformers_formula():
  t = np.arange(0, 1200)
  w, total = 100, 1000  # get_linear_schedule_with_warmup's lr_lambda, times peak
  expected = 1e-3 * np.where(t < w, t / w, np.maximum(0.0, (total - t) / (total - w)))
  npt.assert_allclose(lr(sch.linear(1e-3, total, w), t), expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize("init,min_ratio,warmup,total", [
    (0.0, 0.0, 100, 1000), (1e-5, 0.1, 37, 5003), (0.0, 0.0, 0, 777), (2e-4, 0.5, 1, 10)])
def test_cosine_matches_optax(init, min_ratio, warmup, total):
  peak = 1e-3
  ours = sch.cosine(peak, total, warmup, min_lr_ratio=min_ratio, init_lr=init)
  ref = optax.warmup_cosine_decay_schedule(init, peak, warmup, total, min_ratio * peak)
  t = jnp.arange(0, total + 100, dtype=jnp.int32)
  # atol: optax's own float32 rounding near lr = 0 (1 + cos cancels) is ~1e-7 * peak.
  npt.assert_allclose(lr(ours, t), np.asarray(jax.jit(ref)(t)), rtol=RTOL, atol=1e-6 * peak)


# ---- exactness near 2**31 ----
@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_wsd_exact_near_int32_max(min_ratio):
  d = round(0.1 * TOP)  # 214748365
  s = sch.wsd(peak_lr=1.0, total_steps=TOP, warmup_steps=1000, min_lr_ratio=min_ratio)
  check(s, {TOP - d - 1: 1.0, TOP - d: 1.0, TOP - d + 1: 1 - (1 - min_ratio) / d,
            TOP - 1: min_ratio + (1 - min_ratio) / d})
  assert s(TOP) == np.float32(min_ratio)  # the floor, exactly


def test_constant_warmup_jumps_exactly_at_int32_max():
  s = sch.constant(peak_lr=1.0, warmup_steps=TOP - 1, init_lr=0.5, warmup_shape="constant")
  check(s, {TOP - 2: 0.5, TOP - 1: 1.0})
  assert float(jax.jit(s)(TOP)) == 1.0


def test_wsd_s_exact_at_large_steps():
  b1, b2 = 2**30, 3 * 2**29
  d1, d2 = sch.decay_lengths((b1, b2), 0.1)
  assert (d1, d2) == (107374182, 161061274)
  c1, c2 = sch.wsd_s_checkpoints((b1, b2), 0.1)
  assert (c1, c2) == (b1, b2 + d1)
  jump = sch.wsd_s(1.0, (b1, b2), warmup_steps=10, min_lr_ratio=0.1)
  check(jump, {c1 - d1 - 1: 1.0, c1 - d1: 1.0, c1 - 1: 0.1 + 0.9 / d1, c1: 1.0,
               c2 - d2: 1.0, c2 - 1: 0.1 + 0.9 / d2, c2: 0.1})
  r = 2**20
  ramp = sch.wsd_s(1.0, (b1, b2), warmup_steps=10, rewarmup_steps=r, min_lr_ratio=0.1)
  check(ramp, {c1 - 1: 0.1 + 0.9 / d1, c1: 0.1, c1 + r // 2: 0.55, c1 + r - 1: 1 - 0.9 / r,
               c1 + r: 1.0})


# ---- WSD-S ----
def test_wsd_s_paper_run():
  budgets = (12500, 25000, 50000)
  s = sch.wsd_s(peak_lr=1e-3, budgets=budgets, warmup_steps=2000, decay_fraction=0.1,
              min_lr_ratio=0.1)
  assert sch.decay_lengths(budgets, 0.1) == [1250, 2500, 5000]
  assert sch.wsd_s_checkpoints(budgets, 0.1) == [12500, 26250, 53750]
  decays = [(p.start, p.end) for p in s.phases if p.name.startswith("decay")]
  assert decays == [(11250, 12500), (23750, 26250), (48750, 53750)]
  check(s, {0: 0.0, 1000: 5e-4, 2000: 1e-3, 11249: 1e-3, 11250: 1e-3,
            12499: 1e-4 + 9e-4 / 1250, 12500: 1e-3, 23749: 1e-3, 23750: 1e-3,
            26249: 1e-4 + 9e-4 / 2500, 26250: 1e-3, 48750: 1e-3, 53749: 1e-4 + 9e-4 / 5000,
            53750: 1e-4, 10**8: 1e-4})


def test_wsd_s_checkpoints_cost_what_wsd_spends():
  budgets = (150, 300, 600, 1000)
  d = sch.decay_lengths(budgets, 0.1)
  for i, c in enumerate(sch.wsd_s_checkpoints(budgets, 0.1)):
    # WSD for its first i+1 budgets: main to B_i - d_i, plus every decay branch so far.
    assert c == budgets[i] - d[i] + sum(d[:i + 1])


def test_wsd_s_rewarmup():
  s = sch.wsd_s(1.0, (100, 200), warmup_steps=10, rewarmup_steps=20, min_lr_ratio=0.1)
  assert [(p.name, p.start, p.end) for p in s.phases] == [
      ("warmup", 0, 10), ("stable 1", 10, 90), ("decay 1", 90, 100), ("rewarmup 2", 100, 120),
      ("stable 2", 120, 190), ("decay 2", 190, 210), ("floor", 210, None)]
  check(s, {99: 0.19, 100: 0.1, 110: 0.55, 119: 0.955, 120: 1.0, 189: 1.0, 190: 1.0,
            200: 0.55, 209: 0.145, 210: 0.1})


# ---- cyclic cosine ----
def test_cyclic_cosine_cycles():
  s = sch.cyclic_cosine(1.0, (100, 300), warmup_steps=10, rewarmup_steps=20, min_lr_ratio=0.1)
  assert [p.name for p in s.phases] == ["warmup", "cosine 1", "rewarmup 2", "cosine 2",
                                        "floor"]
  check(s, {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55,
            99: 0.1 + 0.45 * (1 + math.cos(math.pi * 89 / 90)),
            100: 0.0, 110: 0.5, 120: 1.0, 210: 0.55, 299: 0.1 + 0.45 * (1 + math.cos(
                math.pi * 179 / 180)), 300: 0.1, 400: 0.1})


def test_cyclic_cosine_without_rewarmup_restarts_at_peak():
  s = sch.cyclic_cosine(1.0, (100, 300), warmup_steps=10, min_lr_ratio=0.1)
  check(s, {100: 1.0, 200: 0.55, 300: 0.1})


def test_cyclic_cosine_with_one_budget_is_cosine():
  one = sch.cyclic_cosine(2e-3, (500,), 50, init_lr=1e-4, min_lr_ratio=0.2)
  t = np.arange(600)
  npt.assert_array_equal(lr(one, t), lr(sch.cosine(2e-3, 500, 50, 0.2, 1e-4), t))


# ---- jit, vmap, Optax ----
ALL = {
    "wsd": sch.wsd(1e-3, 1000, 100, decay_shape="1-sqrt", min_lr_ratio=0.1),
    "wsd_s": sch.wsd_s(1e-3, (200, 500), 20, rewarmup_steps=10, decay_shape="cosine"),
    "cyclic_cosine": sch.cyclic_cosine(1e-3, (200, 500), 20, rewarmup_steps=10),
    "cosine": sch.cosine(1e-3, 500, 20, warmup_shape="cosine"),
    "linear": sch.linear(1e-3, 500, 20),
    "constant": sch.constant(1e-3, 20, init_lr=1e-5, warmup_shape="exponential"),
}


@pytest.mark.parametrize("name", sch.NAMES)
def test_jit_vmap_and_python_ints(name):
  s = ALL[name]
  t = jnp.arange(0, 1100, 7, dtype=jnp.int32)
  eager = s(t)
  assert eager.dtype == jnp.float32 and eager.shape == t.shape
  npt.assert_allclose(jax.jit(s)(t), eager, rtol=RTOL)  # XLA may fuse differently
  npt.assert_allclose(jax.vmap(s)(t), eager, rtol=RTOL)
  npt.assert_allclose([s(int(i)) for i in t[:20]], eager[:20], rtol=RTOL)
  assert s(3).dtype == jnp.float32 and s(3).shape == ()


def test_drives_an_optax_optimizer_under_jit():
  s = sch.wsd(1.0, 10, 2, decay_steps=3)
  tx = optax.sgd(s)
  params = jnp.zeros(())
  state = tx.init(params)
  step = jax.jit(lambda g, st: tx.update(g, st))
  got = []
  for _ in range(11):
    update, state = step(jnp.ones(()), state)
    got.append(-float(update))
  npt.assert_allclose(got, lr(s, range(11)), rtol=RTOL)


# ---- bad arguments: ValueError naming the argument ----
BAD = [
    (sch.wsd, dict(peak_lr=0.0, total_steps=100, warmup_steps=0), "peak_lr"),
    (sch.wsd, dict(peak_lr=-1e-3, total_steps=100, warmup_steps=0), "peak_lr"),
    (sch.linear, dict(peak_lr=float("nan"), total_steps=100, warmup_steps=0), "peak_lr"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=-1, warmup_steps=0), "total_steps"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=TOP + 1, warmup_steps=0), "total_steps"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=-5), "warmup_steps"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=1.5), "warmup_steps"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=1000, warmup_steps=901), "warmup_steps"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, decay_steps=101), "decay_steps"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, decay_steps=0), "decay_steps"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, decay_fraction=0.0),
     "decay_fraction"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, decay_fraction=1.5),
     "decay_fraction"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, decay_fraction=0.001),
     "decay_fraction"),  # round(0.1) = 0 decay steps
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, warmup_shape="quadratic"),
     "warmup_shape"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, decay_shape="step"),
     "decay_shape"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=10, warmup_shape="exponential"),
     "init_lr"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, decay_shape="exponential"),
     "min_lr_ratio"),
    (sch.wsd, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, min_lr_ratio=1.5),
     "min_lr_ratio"),
    (sch.cosine, dict(peak_lr=1.0, total_steps=100, warmup_steps=0, min_lr_ratio=-0.1),
     "min_lr_ratio"),
    (sch.constant, dict(peak_lr=1.0, warmup_steps=0, init_lr=-1.0), "init_lr"),
    (sch.constant, dict(peak_lr=1.0, warmup_steps=-1), "warmup_steps"),
    (sch.cosine, dict(peak_lr=1.0, total_steps=100, warmup_steps=100), "warmup_steps"),
    (sch.linear, dict(peak_lr=1.0, total_steps=0, warmup_steps=0), "total_steps"),
    (sch.wsd_s, dict(peak_lr=1.0, budgets=(), warmup_steps=0), "budgets"),
    (sch.wsd_s, dict(peak_lr=1.0, budgets=(100, 100), warmup_steps=0), "budgets"),
    (sch.wsd_s, dict(peak_lr=1.0, budgets=(200, 100), warmup_steps=0), "budgets"),
    (sch.wsd_s, dict(peak_lr=1.0, budgets=(0, 100), warmup_steps=0), "budgets"),
    (sch.wsd_s, dict(peak_lr=1.0, budgets=(2**30, TOP), warmup_steps=0, decay_fraction=0.5),
     "budgets"),  # the last checkpoint passes 2**31 - 1
    (sch.wsd_s, dict(peak_lr=1.0, budgets=(100,), warmup_steps=91), "warmup_steps"),
    (sch.wsd_s, dict(peak_lr=1.0, budgets=(100, 200), warmup_steps=0, rewarmup_steps=91),
     "rewarmup_steps"),
    (sch.wsd_s, dict(peak_lr=1.0, budgets=(100, 200), warmup_steps=0, rewarmup_steps=-1),
     "rewarmup_steps"),
    (sch.wsd_s, dict(peak_lr=1.0, budgets=(100, 200), warmup_steps=0, decay_fraction=0.0),
     "decay_fraction"),
    (sch.cyclic_cosine, dict(peak_lr=1.0, budgets=(100, 200), warmup_steps=100), "warmup_steps"),
    (sch.cyclic_cosine, dict(peak_lr=1.0, budgets=(100, 200), warmup_steps=0,
                             rewarmup_steps=100), "rewarmup_steps"),
    (sch.cyclic_cosine, dict(peak_lr=1.0, budgets="100", warmup_steps=0), "budgets"),
    (sch.decay_lengths, dict(budgets=(3, 2), decay_fraction=0.1), "budgets"),
    (sch.wsd_s_checkpoints, dict(budgets=(100,), decay_fraction=2.0), "decay_fraction"),
]


@pytest.mark.parametrize("fn,kwargs,arg", BAD,
                         ids=[f"{f.__name__}-{a}-{i}" for i, (f, _, a) in enumerate(BAD)])
def test_bad_argument_names_it(fn, kwargs, arg):
  with pytest.raises(ValueError) as e:
    fn(**kwargs)
  assert str(e.value).startswith(f"{arg}: ") and "; " in str(e.value), str(e.value)


def test_unknown_shape_lists_valid_ones():
  with pytest.raises(ValueError, match="'linear', 'cosine', '1-sqrt', 'exponential'"):
    sch.wsd(1.0, 100, 0, decay_shape="step")
  with pytest.raises(ValueError, match="'linear', 'constant', 'exponential', 'cosine'"):
    sch.constant(1.0, 10, warmup_shape="step")


def test_boundary_arguments_are_valid():
  sch.wsd(1.0, 100, warmup_steps=90, decay_steps=10)  # warmup + decay = the run
  sch.wsd_s(1.0, (100, 200), warmup_steps=90, rewarmup_steps=90)  # both end as decays start
  sch.wsd(1.0, 100, 0, decay_fraction=1.0, min_lr_ratio=1.0)
  sch.wsd(1.0, 100, 0, decay_shape="exponential", min_lr_ratio=0.1)
  sch.constant(1.0, 0, warmup_shape="exponential")  # no warmup: init_lr = 0 is fine


# ---- ScheduleSpec: from a config section, built once ----
def from_config(section_):
  return ScheduleSpec.from_config(section_).build()


BUILT = {
    "wsd": lambda: sch.wsd(3e-3, 600, 30, decay_fraction=0.1, min_lr_ratio=0.1),
    "wsd_s": lambda: sch.wsd_s(3e-3, (150, 300, 600), 30, min_lr_ratio=0.1),
    "cyclic_cosine": lambda: sch.cyclic_cosine(3e-3, (150, 300, 600), 30, min_lr_ratio=0.1),
    "cosine": lambda: sch.cosine(3e-3, 600, 30, min_lr_ratio=0.1),
    "linear": lambda: sch.linear(3e-3, 600, 30, min_lr_ratio=0.1),
    "constant": lambda: sch.constant(3e-3, 30),
}


@pytest.mark.parametrize("name", sch.NAMES)
def test_from_config_every_name(name):
  assert from_config(section(name=name)).phases == BUILT[name]().phases
  listed = section(name=name, budgets=[150, 300, 600])  # a list works as well as a tuple
  assert from_config(listed).phases == BUILT[name]().phases


def test_from_config_base_config_section():
  from wsdjax.config import base_config
  cfg = base_config().schedule
  assert cfg.name == "wsd_s"
  assert from_config(cfg).phases == sch.wsd_s(
      cfg.peak_lr, cfg.budgets, cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio).phases


def test_from_config_wsd_total_and_decay_steps():
  fixed = from_config(section(name="wsd", decay_steps=50))
  assert fixed.phases == sch.wsd(3e-3, 600, 30, decay_steps=50, min_lr_ratio=0.1).phases
  total = from_config(section(name="wsd", total_steps=400, decay_steps=None))
  assert total.phases == sch.wsd(3e-3, 400, 30, min_lr_ratio=0.1).phases
  plan_segment = ml_collections.ConfigDict(dict(name="wsd", total_steps=150, decay_steps=15,
                                                peak_lr=3e-3, warmup_steps=30))
  assert from_config(plan_segment).phases[-2] == sch.Phase("decay", 135, 150, 3e-3, 0.0)


@pytest.mark.parametrize("fields,field", [
    (dict(name="nope"), "schedule.name"),
    (dict(peak_lr=-1.0), "schedule.peak_lr"),
    (dict(warmup_shape="quadratic"), "schedule.warmup_shape"),
    (dict(budgets=(300, 150)), "schedule.budgets"),
    (dict(name="cosine", budgets=(TOP + 1,)), "schedule.budgets"),  # total from budgets
    (dict(name="wsd", budgets=()), "schedule.budgets"),
    (dict(name="wsd", budgets=(20, 600)), "schedule.warmup_steps"),  # budget 20's branch
    (dict(name="wsd", total_steps=20), "schedule.warmup_steps"),
    (dict(rewarmup_steps=500), "schedule.rewarmup_steps"),
])
def test_spec_check_errors_name_the_field(fields, field):
  with pytest.raises(ConfigError) as e:
    spec_lib.check(section(**fields))
  assert str(e.value).startswith(f"{field}: "), str(e.value)


def test_spec_is_built_once_and_keeps_the_manifest_fields():
  spec = ScheduleSpec.from_config(section(name="wsd", decay_steps=0))
  assert spec.build() is spec.build() is ScheduleSpec.from_config(section(name="wsd")).build()
  assert "decay_steps" not in spec.as_dict() and spec.as_dict()["budgets"] == (150, 300, 600)
  assert list(spec.as_dict()) == sorted(spec.as_dict())
  assert hash(spec) == hash(spec.replace(budgets=(150, 300, 600)))


def test_builders_name_their_argument_and_specs_the_config_field():
  with pytest.raises(ConfigError, match=r"^peak_lr: "):
    sch.wsd(peak_lr=-1.0, total_steps=10, warmup_steps=0)
  with pytest.raises(ConfigError, match=r"^schedule\.peak_lr: "):
    ScheduleSpec("wsd", peak_lr=-1.0, total_steps=10, warmup_steps=0).build()


# ---- phases and checkpoints ----
@pytest.mark.parametrize("name", sch.NAMES)
def test_phases_tile_the_steps_and_match_the_schedule(name):
  s = ALL[name]
  ph = s.phases
  assert ph[0].start == 0 and ph[-1].end is None
  assert all(a.end == b.start for a, b in zip(ph, ph[1:]))
  npt.assert_allclose(lr(s, [p.start for p in ph]), [p.lr_start for p in ph], rtol=RTOL)
  for p in ph[:-1]:  # a phase's formula reaches lr_end at `end` (a 'constant' one jumps)
    if p.shape != "constant":
      npt.assert_allclose(float(sch.phase_lr(p, jnp.int32(p.end))), p.lr_end, rtol=RTOL)


def test_phases_by_name_or_config():
  by_name = sch.phases("wsd_s", peak_lr=3e-3, budgets=(150, 300, 600), warmup_steps=30,
                     min_lr_ratio=0.1)
  assert by_name == list(from_config(section()).phases)
  assert [(p.name, p.start, p.end) for p in by_name] == [
      ("warmup", 0, 30), ("stable 1", 30, 135), ("decay 1", 135, 150), ("stable 2", 150, 285),
      ("decay 2", 285, 315), ("stable 3", 315, 585), ("decay 3", 585, 645),
      ("floor", 645, None)]
  assert sch.phases("constant", peak_lr=1.0, warmup_steps=0) == [
      sch.Phase("stable", 0, None, 1.0, 1.0, "constant")]


@pytest.mark.parametrize("fields,steps", [
    (dict(name="wsd"), [150, 300, 600]),
    (dict(name="wsd", total_steps=400), [400]),
    (dict(name="wsd_s"), [150, 315, 645]),
    (dict(name="cyclic_cosine"), [150, 300, 600]),
    (dict(name="cosine", budgets=(600,)), [600]),
    (dict(name="linear", budgets=[500]), [500]),
    (dict(name="constant"), []),
])
def test_checkpoint_steps(fields, steps):
  assert ScheduleSpec.from_config(section(**fields)).checkpoint_steps() == steps


# ---- command line ----
TINY = ["lr", "--config", os.path.join(REPO, "configs", "tiny.py"),
        "--config.schedule.name=wsd_s", "--config.schedule.budgets=(40,80)",
        "--config.schedule.warmup_steps=5", "--config.schedule.decay_fraction=0.1"]


def lr_cli(*args):
  """`python -m wsdjax.lr` on the tiny config with `TINY`'s schedule and `args`."""
  return run_cli("wsdjax.lr", *TINY[1:], *args, timeout=120)


@pytest.mark.integration
def test_cli_prints_table_and_writes_png(tmp_path):
  png = tmp_path / "lr.png"
  proc = lr_cli("--plot", str(png))
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  lines = out.splitlines()
  assert lines[0].split() == ["phase", "start", "end", "lr_start", "lr_end", "shape"]
  assert lines[3].split()[:3] == ["decay", "1", "36"] and lines[5].split()[:4] == [
      "decay", "2", "76", "84"]
  assert "decayed checkpoints at steps: 40, 84" in out


@pytest.mark.integration
@pytest.mark.parametrize("flag,field", [
    ("--config.schedule.peak_lr=-1", "schedule.peak_lr"),
    ("--config.schedule.decay_shape=step", "schedule.decay_shape"),
    ("--steps=0", "--steps"),
])
def test_cli_bad_value_is_one_line_exit_2(flag, field):
  proc = lr_cli(flag)
  assert proc.returncode == 2, proc.stderr
  err = proc.stderr
  assert err.startswith(f"wsdjax: {field}: ") and err.count("\n") == 1 and "; " in err, err


@pytest.mark.integration
def test_cli_module_exits_2_without_traceback():
  proc = lr_cli("--config.schedule.warmup_steps=50")
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith("wsdjax: schedule.warmup_steps: ")
  assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
