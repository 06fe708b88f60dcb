"""Learning-rate schedules: Optax schedules `step -> lr` in pure jax.numpy.

Every schedule is a list of consecutive `Phase`s, each a simple formula between two LRs,
and `PhasedSchedule` evaluates them; the same phases feed the plots and the phase table,
so what you see is what trains. Steps are 0-indexed: `schedule(t)` is the LR of update t.

Schedules (W = warmup_steps, min_lr = min_lr_ratio * peak_lr):
  wsd            warmup, peak, decay over the last D steps to min_lr at total_steps.
  wsd_s          WSD-S: one run decays in place to each budget's checkpoint C_i, then goes
                 back to peak (optionally re-warming up); see `wsd_s_checkpoints`.
  cyclic_cosine  one cosine cycle per budget, with optional linear re-warmup.
  cosine         warmup then cosine to min_lr (= optax.warmup_cosine_decay_schedule).
  linear         warmup then linear to min_lr (= transformers' linear schedule with warmup).
  constant       warmup then peak forever (the WSD main branch).

Exactness: a phase boundary is an integer comparison of int32 steps, and the progress
inside a phase is an int32 difference before it becomes float32, so boundaries stay
exact for every step up to 2**31 - 1 (a float32 step would blur them past 2**24).

Decay lengths use Python's round(): d = round(decay_fraction * B), halves to even.

Command line: `python -m wsdjax.lr --config configs/tiny.py [--plot lr.png] [--steps N]`
prints the phase table of the config's `schedule` section (and plots it,
`wsdjax.analysis.plots.plot_schedule`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, Sequence

import jax.numpy as jnp

from wsdjax.runtime.errors import require as _require

MAX_STEP = 2**31 - 1  # the largest int32: steps are int32 inside jit
WARMUP_SHAPES = ("linear", "constant", "exponential", "cosine")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "exponential")


# ---------------------------------------------------------------------------------------
# Phases and their formulas
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Phase:
  """Steps [start, end) where the LR goes from `lr_start` (at start) toward `lr_end`.

  `lr_end` is the value the formula reaches at `end`, i.e. what it hands to the next
  phase (a 'constant' phase holds lr_start and jumps to lr_end there). end=None: forever.
  `shape` names the formula, see `phase_lr`.
  """
  name: str
  start: int
  end: int | None
  lr_start: float
  lr_end: float
  shape: str = "linear"

  @property
  def length(self) -> int | None:
    return None if self.end is None else self.end - self.start


def phase_lr(phase: Phase, t: jnp.ndarray) -> jnp.ndarray:
  """LR of `phase` at int32 steps t, going a = lr_start -> b = lr_end; with q = (t-start)/L
  the progress and r = 1 - q the rest, both from exact int32 step counts:

    linear       a r + b q                          = a + (b - a) q
    cosine       a sin^2(pi r/2) + b sin^2(pi q/2)  = a + (b - a) (1 - cos(pi q)) / 2
    1-sqrt       a r / (1 + sqrt q) + b sqrt q      = b + (a - b) (1 - sqrt q)
    exponential  a (b / a)^q
    constant     a
  Weighting both ends (1 - sqrt q = r / (1 + sqrt q)) keeps float32 precise near either
  end, with no a - b cancellation; lr(start) is exactly a. Steps outside are clipped in.
  """
  a, b = phase.lr_start, phase.lr_end
  if phase.shape == "constant":
    return jnp.full(t.shape, a, jnp.float32)
  done = jnp.clip(t, phase.start, phase.end) - phase.start  # int32 in [0, L]: no overflow
  q = done.astype(jnp.float32) / phase.length
  r = (phase.length - done).astype(jnp.float32) / phase.length
  if phase.shape == "linear":
    return a * r + b * q
  if phase.shape == "cosine":
    return a * jnp.sin(jnp.pi / 2 * r) ** 2 + b * jnp.sin(jnp.pi / 2 * q) ** 2
  if phase.shape == "1-sqrt":
    return a * r / (1 + jnp.sqrt(q)) + b * jnp.sqrt(q)
  if phase.shape == "exponential":
    return a * (b / a) ** q
  raise ValueError(f"phase {phase.name!r}: unknown shape {phase.shape!r}")


def as_step(step) -> jnp.ndarray:
  """A step (Python int or array) as int32, the dtype of Optax's step counter."""
  return jnp.asarray(step).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class PhasedSchedule:
  """An Optax schedule made of consecutive phases: lr(t) = phase_lr(phase holding t, t).

  Steps before the first phase use the first phase; it is hashable, so usable as a
  static argument of jax.jit.
  """
  phases: tuple[Phase, ...]

  def __call__(self, step) -> jnp.ndarray:
    t = as_step(step)
    lr = phase_lr(self.phases[0], t)
    for phase in self.phases[1:]:
      lr = jnp.where(t >= phase.start, phase_lr(phase, t), lr)
    return lr.astype(jnp.float32)


def _joined(*phases: Phase) -> PhasedSchedule:
  """The schedule of the given phases, dropping empty ones (start == end)."""
  return PhasedSchedule(tuple(p for p in phases if p.length != 0))


def _warmup(init_lr, peak_lr, warmup_steps, shape) -> Phase:
  return Phase("warmup", 0, warmup_steps, init_lr, peak_lr, shape)


def _hold(name, start, end, lr) -> Phase:
  return Phase(name, start, end, lr, lr, "constant")


# ---------------------------------------------------------------------------------------
# Argument checks: each raises ConfigError naming the argument (runtime.errors.require)
# ---------------------------------------------------------------------------------------
def _steps(value, arg: str, minimum: int = 0) -> int:
  """`value` as an int step count in [minimum, 2**31 - 1]."""
  ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum
  _require(ok, arg, f"must be a {'non-negative' if minimum == 0 else 'positive'} integer "
           f"number of steps, got {value!r}", f"pass a whole number >= {minimum}")
  _require(value <= MAX_STEP, arg, f"{value} exceeds the int32 step limit {MAX_STEP}",
           "use fewer steps")
  return int(value)


def _lrs(peak_lr, init_lr=0.0, min_lr_ratio=0.0) -> tuple[float, float, float]:
  """(peak_lr, init_lr, min_lr) as floats, checked."""
  _require(isinstance(peak_lr, numbers.Real) and math.isfinite(peak_lr) and peak_lr > 0,
           "peak_lr", f"must be a number > 0, got {peak_lr!r}", "e.g. peak_lr=3e-3")
  _require(isinstance(init_lr, numbers.Real) and math.isfinite(init_lr) and init_lr >= 0,
           "init_lr", f"must be >= 0, got {init_lr!r}", "e.g. init_lr=0.0")
  _require(isinstance(min_lr_ratio, numbers.Real) and 0 <= min_lr_ratio <= 1, "min_lr_ratio",
           f"must be in [0, 1], got {min_lr_ratio!r}", "e.g. min_lr_ratio=0.1")
  return float(peak_lr), float(init_lr), float(min_lr_ratio) * float(peak_lr)


def _shape(value, arg: str, valid: Sequence[str]) -> str:
  _require(value in valid, arg, f"unknown value {value!r}",
           f"use one of {', '.join(repr(v) for v in valid)}")
  return value


def _warmup_args(warmup_steps, warmup_shape, init_lr) -> tuple[int, str]:
  w = _steps(warmup_steps, "warmup_steps")
  shape = _shape(warmup_shape, "warmup_shape", WARMUP_SHAPES)
  _require(not (shape == "exponential" and w > 0 and init_lr == 0), "init_lr",
           "must be > 0 for warmup_shape='exponential' (init * (peak/init)^q)",
           "set init_lr > 0 (e.g. 1e-6) or use another warmup_shape")
  return w, shape


def _decay_shape(decay_shape, min_lr_ratio) -> str:
  shape = _shape(decay_shape, "decay_shape", DECAY_SHAPES)
  _require(not (shape == "exponential" and min_lr_ratio == 0), "min_lr_ratio",
           "must be > 0 for decay_shape='exponential' (peak * (min/peak)^p)",
           "set min_lr_ratio > 0 (e.g. 0.1) or use another decay_shape")
  return shape


def _fraction(decay_fraction) -> float:
  _require(isinstance(decay_fraction, numbers.Real) and 0 < decay_fraction <= 1,
           "decay_fraction", f"must be in (0, 1], got {decay_fraction!r}",
           "e.g. decay_fraction=0.1")
  return float(decay_fraction)


def budget_steps(budgets) -> list[int]:
  """Budgets B_1 < ... < B_k as positive ints."""
  ok = (isinstance(budgets, Sequence) and not isinstance(budgets, str) and len(budgets) > 0
        and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) and b > 0
                for b in budgets))
  _require(ok, "budgets", f"must be a non-empty sequence of positive step counts, got "
           f"{budgets!r}", "e.g. budgets=(150, 300, 600)")
  out = [_steps(b, "budgets", minimum=1) for b in budgets]
  _require(all(a < b for a, b in zip(out, out[1:])), "budgets",
           f"must be strictly increasing, got {tuple(out)}", "sort them and drop repeats")
  return out


# ---------------------------------------------------------------------------------------
# WSD-S bookkeeping
# ---------------------------------------------------------------------------------------
def decay_lengths(budgets: Sequence[int], decay_fraction: float) -> list[int]:
  """d_i = round(decay_fraction * B_i), with Python's round() (halves go to even)."""
  fraction = _fraction(decay_fraction)
  return [round(fraction * b) for b in budget_steps(budgets)]


def wsd_s_checkpoints(budgets: Sequence[int], decay_fraction: float) -> list[int]:
  """C_i = B_i + sum_{j<i} d_j: the step where WSD-S's i-th decayed checkpoint is ready.

  Decay i runs over [C_i - d_i, C_i), so the i-th checkpoint costs C_i steps, as many as
  WSD spends for its first i (main to B_i - d_i plus i decay branches).
  """
  lengths = decay_lengths(budgets, decay_fraction)
  return [int(b) + sum(lengths[:i]) for i, b in enumerate(budgets)]


# ---------------------------------------------------------------------------------------
# The schedules
# ---------------------------------------------------------------------------------------
def wsd(peak_lr: float, total_steps: int, warmup_steps: int, decay_steps: int | None = None,
        decay_fraction: float = 0.1, init_lr: float = 0.0, min_lr_ratio: float = 0.0,
        warmup_shape: str = "linear", decay_shape: str = "linear") -> PhasedSchedule:
  """Warmup-Stable-Decay: warmup over [0, W), peak over [W, T-D), decay over [T-D, T).

  T = total_steps, D = decay_steps or round(decay_fraction * T); min_lr from T on.
  """
  peak, init, min_lr = _lrs(peak_lr, init_lr, min_lr_ratio)
  total = _steps(total_steps, "total_steps", minimum=1)
  w, w_shape = _warmup_args(warmup_steps, warmup_shape, init)
  d_shape = _decay_shape(decay_shape, min_lr_ratio)
  if decay_steps is None:
    d = round(_fraction(decay_fraction) * total)
    _require(d >= 1, "decay_fraction", f"round({decay_fraction} * {total}) = 0 decay steps",
             "raise decay_fraction or set decay_steps")
  else:
    d = _steps(decay_steps, "decay_steps", minimum=1)
    _require(d <= total, "decay_steps", f"{d} exceeds total_steps={total}",
             "use a shorter decay")
  _require(w + d <= total, "warmup_steps",
           f"warmup ({w}) + decay ({d}) = {w + d} steps exceed the run ({total} steps)",
           "shorten the warmup or the decay")
  return _joined(
      _warmup(init, peak, w, w_shape),
      _hold("stable", w, total - d, peak),
      Phase("decay", total - d, total, peak, min_lr, d_shape),
      _hold("floor", total, None, min_lr))


def wsd_s(peak_lr: float, budgets: Sequence[int], warmup_steps: int,
          decay_fraction: float = 0.1, rewarmup_steps: int = 0, init_lr: float = 0.0,
          min_lr_ratio: float = 0.0, warmup_shape: str = "linear",
          decay_shape: str = "linear") -> PhasedSchedule:
  """WSD-S: decay i over [C_i - d_i, C_i) to min_lr, then back to peak; min_lr after C_k.

  d_i = round(decay_fraction * B_i), C_i = B_i + sum_{j<i} d_j (`wsd_s_checkpoints`).
  Back to peak at once, or with rewarmup_steps R > 0 by a linear ramp min_lr -> peak over
  [C_i, C_i + R).
  """
  peak, init, min_lr = _lrs(peak_lr, init_lr, min_lr_ratio)
  w, w_shape = _warmup_args(warmup_steps, warmup_shape, init)
  d_shape = _decay_shape(decay_shape, min_lr_ratio)
  r = _steps(rewarmup_steps, "rewarmup_steps")
  lengths = decay_lengths(budgets, decay_fraction)
  ends = wsd_s_checkpoints(budgets, decay_fraction)
  _require(ends[-1] <= MAX_STEP, "budgets",
           f"the last checkpoint C_k = {ends[-1]} exceeds the int32 step limit {MAX_STEP}",
           "use smaller budgets")
  _require(lengths[0] >= 1, "decay_fraction", f"the first budget gets round("
           f"{decay_fraction} * {budgets[0]}) = 0 decay steps", "raise decay_fraction")
  phases = [_warmup(init, peak, w, w_shape)]
  resume = w  # where the current stable phase starts
  for i, (end, d) in enumerate(zip(ends, lengths), start=1):
    start = end - d
    if i == 1:
      _require(w <= start, "warmup_steps", f"warmup ({w} steps) must end before the first "
               f"decay starts (step {start})", "shorten the warmup or raise budgets[0]")
    else:
      _require(resume <= start, "rewarmup_steps", f"re-warmup ({r} steps) after checkpoint "
               f"{i - 1} (step {ends[i - 2]}) runs past the start of decay {i} (step "
               f"{start})", "shorten the re-warmup or space the budgets further apart")
    phases += [_hold(f"stable {i}", resume, start, peak),
               Phase(f"decay {i}", start, end, peak, min_lr, d_shape)]
    if i < len(ends):
      phases.append(Phase(f"rewarmup {i + 1}", end, end + r, min_lr, peak, "linear"))
      resume = end + r
  phases.append(_hold("floor", ends[-1], None, min_lr))
  return _joined(*phases)


def cyclic_cosine(peak_lr: float, budgets: Sequence[int], warmup_steps: int,
                  rewarmup_steps: int = 0, init_lr: float = 0.0, min_lr_ratio: float = 0.0,
                  warmup_shape: str = "linear") -> PhasedSchedule:
  """One cosine cycle per budget: cycle 1 warms up over [0, W) then cosine peak -> min_lr at
  B_1; cycle i spans [B_{i-1}, B_i): linear init_lr -> peak over R steps, then cosine to
  min_lr at B_i. min_lr after B_k.
  """
  peak, init, min_lr = _lrs(peak_lr, init_lr, min_lr_ratio)
  w, w_shape = _warmup_args(warmup_steps, warmup_shape, init)
  r = _steps(rewarmup_steps, "rewarmup_steps")
  ends = budget_steps(budgets)
  _require(w < ends[0], "warmup_steps", f"warmup ({w} steps) must end before the first "
           f"budget ({ends[0]})", "shorten the warmup or raise budgets[0]")
  phases = [_warmup(init, peak, w, w_shape), Phase("cosine 1", w, ends[0], peak, min_lr,
                                                    "cosine")]
  for i, (start, end) in enumerate(zip(ends, ends[1:]), start=2):
    _require(r < end - start, "rewarmup_steps", f"re-warmup ({r} steps) does not fit in "
             f"cycle {i} [{start}, {end}) of {end - start} steps", "shorten the re-warmup")
    phases += [Phase(f"rewarmup {i}", start, start + r, init, peak, "linear"),
               Phase(f"cosine {i}", start + r, end, peak, min_lr, "cosine")]
  phases.append(_hold("floor", ends[-1], None, min_lr))
  return _joined(*phases)


def _warmup_then_decay(decay_name, decay_shape, peak_lr, total_steps, warmup_steps,
                       min_lr_ratio, init_lr, warmup_shape) -> PhasedSchedule:
  """Warmup over [0, W), decay peak -> min_lr over [W, T), min_lr from T on."""
  peak, init, min_lr = _lrs(peak_lr, init_lr, min_lr_ratio)
  total = _steps(total_steps, "total_steps", minimum=1)
  w, w_shape = _warmup_args(warmup_steps, warmup_shape, init)
  _require(w < total, "warmup_steps", f"warmup ({w} steps) must end before the end of the "
           f"run ({total} steps)", "shorten the warmup or lengthen the run")
  return _joined(
      _warmup(init, peak, w, w_shape),
      Phase(decay_name, w, total, peak, min_lr, decay_shape),
      _hold("floor", total, None, min_lr))


def cosine(peak_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0,
           init_lr: float = 0.0, warmup_shape: str = "linear") -> PhasedSchedule:
  """Warmup, then min + (peak - min)(1 + cos(pi p))/2 with p = (t - W)/(T - W); min from T.

  Equals optax.warmup_cosine_decay_schedule(init_lr, peak_lr, W, T, min_lr).
  """
  return _warmup_then_decay("cosine", "cosine", peak_lr, total_steps, warmup_steps,
                            min_lr_ratio, init_lr, warmup_shape)


def linear(peak_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0,
           init_lr: float = 0.0, warmup_shape: str = "linear") -> PhasedSchedule:
  """Warmup, then peak + (min - peak) p with p = (t - W)/(T - W); min from T on.

  With init = min = 0 this is transformers.get_linear_schedule_with_warmup.
  """
  return _warmup_then_decay("decay", "linear", peak_lr, total_steps, warmup_steps,
                            min_lr_ratio, init_lr, warmup_shape)


def constant(peak_lr: float, warmup_steps: int, init_lr: float = 0.0,
             warmup_shape: str = "linear") -> PhasedSchedule:
  """Warmup over [0, W), then peak forever (the main branch of WSD)."""
  peak, init, _ = _lrs(peak_lr, init_lr)
  w, w_shape = _warmup_args(warmup_steps, warmup_shape, init)
  return _joined(_warmup(init, peak, w, w_shape), _hold("stable", w, None, peak))


BUILDERS: dict[str, Callable[..., PhasedSchedule]] = {
    "wsd": wsd, "wsd_s": wsd_s, "cyclic_cosine": cyclic_cosine, "cosine": cosine,
    "linear": linear, "constant": constant}
NAMES = tuple(BUILDERS)


def phases(name: str, **kwargs) -> list[Phase]:
  """The phases of the schedule `name` with the builder's arguments, e.g.
  phases('wsd', peak_lr=3e-3, total_steps=600, warmup_steps=30)."""
  _require(name in BUILDERS, "name", f"unknown value {name!r}", f"use one of {', '.join(NAMES)}")
  return list(BUILDERS[name](**kwargs).phases)


def check_arguments(peak_lr=1.0, warmup_steps=0, budgets=(1,), total_steps=None,
                    decay_fraction=0.1, decay_steps=None, init_lr=0.0, min_lr_ratio=0.0,
                    warmup_shape="linear", decay_shape="linear", rewarmup_steps=0) -> None:
  """Each argument of the schedules on its own, whichever builder takes it (a config
  section holds them all, whatever its name): the checks the builders make, which also
  check how the arguments fit together. Raises ConfigError naming the argument."""
  _lrs(peak_lr, init_lr, min_lr_ratio)
  budget_steps(budgets)
  for arg, value in (("warmup_steps", warmup_steps), ("rewarmup_steps", rewarmup_steps),
                     ("decay_steps", decay_steps or 0), ("total_steps", total_steps or 0)):
    _steps(value, arg)
  _fraction(decay_fraction)
  _shape(warmup_shape, "warmup_shape", WARMUP_SHAPES)
  _shape(decay_shape, "decay_shape", DECAY_SHAPES)


# ---------------------------------------------------------------------------------------
# Table (the plot: wsdjax.analysis.plots.plot_schedule; the command line: python -m wsdjax.lr)
# ---------------------------------------------------------------------------------------
def format_phases(phase_list: Sequence[Phase], checkpoints: Sequence[int] = ()) -> str:
  """The phase table: name, [start, end), LR at both ends; then the checkpoint steps."""
  lines = [f"{'phase':<12} {'start':>11} {'end':>11} {'lr_start':>11} {'lr_end':>11}  shape"]
  for p in phase_list:
    end = "-" if p.end is None else str(p.end)
    lines.append(f"{p.name:<12} {p.start:>11} {end:>11} {p.lr_start:>11.4e} "
                 f"{p.lr_end:>11.4e}  {p.shape}")
  if checkpoints:
    lines.append("decayed checkpoints at steps: " + ", ".join(map(str, checkpoints)))
  return "\n".join(lines)
