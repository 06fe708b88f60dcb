"""The jitted train/eval steps and the loop that runs a plan (the train state and the
optimizer: `wsdjax.train_state`).

`train_step(state, batch) -> (state, metrics)` is a pure function; `Trainer.run()` executes
the branch plan segment by segment: it restores or forks the start state, compiles the
step for the segment's LR schedule ahead of the loop, trains, saves into the checkpoint
tree, evaluates decayed checkpoints and records them in the manifest. A rerun of the same
command resumes where the plan stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from wsdjax import checkpoint as ckpt
from wsdjax import files
from wsdjax.checkpoint import lock as ckpt_lock
from wsdjax import config as config_lib
from wsdjax import data as data_lib
from wsdjax.process import distributed
from wsdjax.process import faults
from wsdjax import metrics as metrics_lib
from wsdjax import model as model_lib
from wsdjax import plan as plan_lib
from wsdjax import live_branch
from wsdjax import schedules
from wsdjax import sharding
from wsdjax.plan import MAIN, Segment, StateRef


# The train state lives in its own module (checkpoint.restore needs it, not the trainer);
# these names stay importable from here.
from wsdjax.train_state import (TrainState, abstract_state, init_state,  # noqa: F401
                                make_optimizer, state_shardings)


# ---- the steps ----
def _loss(params, model, tokens):
  return model.apply({"params": params}, tokens[:, :-1], tokens[:, 1:])


def loss_and_grads(params, batch: jax.Array, *, model, micro_batches: int = 1,
                   micro_sharding=None) -> tuple[jax.Array, Any]:
  """Mean loss and its gradient over a batch of token rows [B, T+1].

  With k = micro_batches > 1 the batch is split into k micro-batches (rows i*k + j form
  micro-batch j, so each stays spread over the data devices); their losses and gradients
  are averaged in a `lax.scan`, equal to one pass over the whole batch.
  """
  grad_fn = jax.value_and_grad(_loss)
  if micro_batches == 1:
    return grad_fn(params, model, batch)
  b, t = batch.shape
  stack = batch.reshape(b // micro_batches, micro_batches, t).swapaxes(0, 1)
  if micro_sharding is not None:
    stack = jax.lax.with_sharding_constraint(stack, micro_sharding)

  def accumulate(carry, micro):
    loss_sum, grad_sum = carry
    loss, grads = grad_fn(params, model, micro)
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), stack)
  return loss / micro_batches, jax.tree.map(lambda g: g / micro_batches, grads)


def train_step(state: TrainState, batch: jax.Array, *, model, tx, schedule,
               micro_batches: int = 1, micro_sharding=None) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch of token rows [B, T+1].

  Args:
    state: the train state before update `state.step`.
    batch: int32 tokens; inputs are batch[:, :-1], targets batch[:, 1:].
    model, tx, schedule: the Flax model, the optax optimizer, and its LR schedule.
    micro_batches, micro_sharding: gradient accumulation (see `loss_and_grads`).
  Returns:
    (new state, metrics): train_loss, grad_norm, lr of this update, and `finite`.
  """
  loss, grads = loss_and_grads(state.params, batch, model=model, micro_batches=micro_batches,
                               micro_sharding=micro_sharding)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"train_loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
             "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: jax.Array, *, model) -> jax.Array:
  """Mean next-token loss (nats) of a batch of token rows [B, T+1]."""
  return _loss(params, model, batch)


class StepCache:
  """Train steps compiled ahead of time, one per (LR schedule, donate) pair.

  Compiling before the loop means a step never recompiles inside it; `compiles` counts
  how many were built (the tests assert it).
  """

  def __init__(self, cfg, mesh, model):
    self.cfg, self.mesh, self.model = cfg, mesh, model
    self.rules = sharding.rules_from_config(cfg.mesh)
    self.state_sh = state_shardings(cfg, mesh)
    self.batch_sh = sharding.batch_sharding(mesh)
    self.abstract = abstract_state(cfg, mesh)
    rows = cfg.train.global_batch_size
    self.batch_spec = jax.ShapeDtypeStruct((rows, cfg.model.seq_len + 1), jnp.int32,
                                           sharding=self.batch_sh)
    self._train: dict[tuple, Callable] = {}
    self._eval = None
    self.compiles = 0
    self.compile_seconds = 0.0

  def train(self, schedule_key: tuple, donate: bool) -> Callable:
    key = (schedule_key, donate)
    if key not in self._train:
      schedule = schedules.from_config(plan_lib.as_config(dict(schedule_key)))
      tx = make_optimizer(self.cfg.optimizer, schedule)
      k = self.cfg.train.micro_batches
      micro_sh = jax.sharding.NamedSharding(
          self.mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"), None))
      fn = functools.partial(train_step, model=self.model, tx=tx, schedule=schedule,
                             micro_batches=k, micro_sharding=micro_sh)
      jitted = jax.jit(fn, in_shardings=(self.state_sh, self.batch_sh),
                       out_shardings=(self.state_sh, sharding.replicated(self.mesh)),
                       donate_argnums=(0,) if donate else ())
      self._train[key] = self._compile(jitted, self.abstract, self.batch_spec)
    return self._train[key]

  def eval(self) -> Callable:
    if self._eval is None:
      fn = functools.partial(eval_step, model=self.model)
      jitted = jax.jit(fn, in_shardings=(self.state_sh.params, self.batch_sh),
                       out_shardings=sharding.replicated(self.mesh))
      self._eval = self._compile(jitted, self.abstract.params, self.batch_spec)
    return self._eval

  def _compile(self, jitted, *args):
    t0 = time.perf_counter()
    with sharding.with_rules(self.mesh, self.rules):
      compiled = jitted.lower(*args).compile()
    self.compile_seconds += time.perf_counter() - t0
    self.compiles += 1
    return compiled


# ---- the loop ----
class Stop(Exception):
  """Training stopped early on request (signal or preemption); state was saved."""


class NonFiniteLoss(RuntimeError):
  """The loss or gradient norm went NaN/Inf; nothing non-finite was saved."""


@dataclasses.dataclass
class Live:
  """A state held in memory with the data position that goes with it."""
  state: TrainState
  position: dict


class Trainer:
  """Runs a config's branch plan in a workdir: `with Trainer(cfg, workdir) as t: t.run()`
  (the context closes its metric writer and checkpoint tree, waiting for pending saves)."""

  def __init__(self, cfg, workdir: str, mesh=None, stream=None):
    self.cfg = cfg
    self.workdir = epath.Path(workdir)
    ckpt_lock.acquire(workdir)  # first: nothing is written to a workdir another run writes
    try:
      self._open(cfg, mesh, stream)
    except BaseException:
      ckpt_lock.release(workdir)
      raise

  def _open(self, cfg, mesh, stream) -> None:
    self.mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh)
    self.rules = sharding.rules_from_config(cfg.mesh)
    platform = sharding.platform_of(self.mesh)
    self.model = model_lib.build_model(cfg.model, platform)
    self.plan = plan_lib.make_plan(cfg.schedule)
    self.data = data_lib.build_pipeline(cfg, workdir=str(self.workdir))
    self.writer = metrics_lib.MetricWriter(self.workdir, stream=stream)
    self.tree = ckpt.CheckpointTree(
        self.workdir, async_save=cfg.checkpoint.async_save,
        compression=ckpt.resolve_compression(cfg.checkpoint.compression, platform),
        checksums=cfg.checkpoint.checksums)
    self.steps = StepCache(cfg, self.mesh, self.model)
    self.tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_len
    self.flops_per_token = model_lib.flops_per_token(cfg.model)
    self._eval_batches = None
    self._stop_signal = None
    self.started = time.perf_counter()  # for the closing line's wall time
    self.steps_done_here = 0  # steps this process ran (a resumed run: since the resume)

  def close(self) -> None:
    """Close the metric writer and the checkpoint tree (which waits for pending saves),
    then drop the workdir's writer lock."""
    try:
      self.writer.close()
      self.tree.close()
    finally:
      ckpt_lock.release(self.workdir)

  def __enter__(self) -> "Trainer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- bookkeeping --
  def run_steps_before(self, index: int) -> int:
    """Updates the run executed before planned segment `index` starts (extra branches
    finished so far included)."""
    return self.plan.steps_before(index) + self.extra_steps()

  def extra_steps(self) -> int:
    """Updates spent on decay branches outside the plan (live or after the fact)."""
    return sum(e["step"] - e["fork_step"] for e in self.tree.manifest()
               if e.get("extra") and e.get("decayed"))

  def entry_for(self, seg: Segment, step: int, run_steps: int, lr: float, **extra) -> dict:
    """The manifest entry of `seg`'s state at `step`, the run having done `run_steps`."""
    return dict(
        branch=seg.branch, step=int(step), parent=seg.parent, fork_step=seg.fork_step,
        tokens=int(step) * self.tokens_per_step,
        flops=float(step) * self.tokens_per_step * self.flops_per_token,
        run_flops=float(run_steps) * self.tokens_per_step * self.flops_per_token,
        lr=float(lr), decayed=False, fork_point=False, eval_loss=None) | extra

  def eval_loss(self, params) -> float:
    if self._eval_batches is None:
      sh = sharding.batch_sharding(self.mesh)
      self._eval_batches = [data_lib.to_global(b, sh) for b in self.data.eval_batches()]
    step = self.steps.eval()
    losses = [step(params, b) for b in self._eval_batches]
    return float(np.mean([float(x) for x in losses]))

  # -- signals --
  def _install_signal_handlers(self):
    def handler(signum, _frame):
      self._stop_signal = signum
    self._old_handlers = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

  def _restore_signal_handlers(self):
    for s, h in getattr(self, "_old_handlers", {}).items():
      signal.signal(s, h)

  def _should_stop(self, step: int) -> bool:
    """A signal or preemption asks to stop. One process checks every step; several agree
    every `log_every` steps (a collective each step would stall the step pipeline)."""
    local = self._stop_signal is not None
    if jax.process_count() == 1:
      return local or distributed.reached_preemption(step)
    if step % self.cfg.train.log_every:
      return False
    return distributed.any_process(local) or distributed.reached_preemption(step)

  # -- start states --
  def _restore(self, ref: StateRef) -> Live:
    state, meta = self.tree.restore(ref, self.steps.abstract)
    saved, now = meta.get("fingerprint") or {}, self.data.fingerprint()
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
      raise config_lib.ConfigError(
          "data", f"the data stream differs from the one {ref.branch}@{ref.step} was trained "
          f"on ({', '.join(changed)} changed)", "restore the original data/tokenizer, or "
          "start a new --workdir")
    return Live(state, distributed.my_position(meta.get("data_positions")))

  def _start_of(self, index: int, seg: Segment, live: dict[StateRef, Live]) -> tuple[int, Live, bool]:
    """(start step, state, may donate) for segment `index`: a save inside the segment
    (resume), else its start state from memory, from the tree, or a fresh init."""
    inside = [s for s in self.tree.steps(seg.branch) if seg.start < s < seg.end]
    if inside:
      return inside[-1], self._restore(StateRef(seg.branch, inside[-1])), True
    reused = self.plan.input_reused(index)
    if seg.init_from is None:
      return 0, Live(init_state(self.cfg, self.mesh), {"step": 0}), True
    if seg.init_from in live:
      held = live[seg.init_from] if reused else live.pop(seg.init_from)
      return seg.start, held, not reused
    restored = self._restore(seg.init_from)
    if reused:
      live[seg.init_from] = restored
    return seg.start, restored, not reused

  # -- saving --
  def save(self, seg: Segment, step: int, run_steps: int, live: Live, lr: float,
           **extra) -> None:
    """Save `live` as `seg`'s state at `step` (async), its manifest entry `entry_for(...)`
    plus `extra`; reports the saves that have finished since the last call."""
    entry = self.entry_for(seg, step, run_steps, lr, **extra)
    positions = distributed.allgather_json(live.position)
    self.tree.save(StateRef(seg.branch, step), live.state, entry,
                   {"data_positions": positions, "fingerprint": self.data.fingerprint()})
    self._report_saves()

  def _report_saves(self, wait: bool = False) -> None:
    for entry in (self.tree.wait() if wait else self.tree.poll()):
      what = "decayed checkpoint" if entry.get("decayed") else "checkpoint"
      extra = f", eval loss {entry['eval_loss']:.4f}" if entry.get("eval_loss") is not None else ""
      self.writer.print(f"saved {what} {entry['branch']}@{entry['step']}{extra}")

  # -- main entry --
  def run(self) -> list[dict]:
    """Execute the plan (resuming), then return the manifest entries of decayed checkpoints."""
    self.writer.print(model_lib.describe(self.cfg.model))
    self.writer.print(plan_lib.describe(self.plan))
    if self.data.entropy_rate is not None:
      self.writer.print(f"data: bigram chain, entropy rate (optimal loss) "
                        f"{self.data.entropy_rate:.4f} nats/token")
    self._install_signal_handlers()
    try:
      while True:
        try:
          self._run_plan()
          break
        except ckpt.BrokenCheckpoint as broken:  # set it aside, resume from an earlier save
          moved = self.tree.quarantine(broken.ref, str(broken))
          self.writer.print(f"{broken}; moved it to {moved} and resuming from the previous "
                            "complete save")
      self._report_saves(wait=True)
      self.tree.prune(self.cfg.checkpoint.keep, self.plan.required_states())
      return self.summary()
    finally:
      self._restore_signal_handlers()
      if not self.tree.failed:
        self.tree.wait()

  def _run_plan(self) -> None:
    """Run every segment of the plan not yet on disk, and live branches cut short."""
    live: dict[StateRef, Live] = {}
    for request in live_branch.accepted(self.workdir):  # live branches cut short
      if not self.tree.has(StateRef(request.branch, request.end)):
        self.run_extra(request.segment(self.cfg.schedule))
      live_branch.finish(self.workdir, request)
    for index, seg in enumerate(self.plan.segments):
      if self.tree.has(seg.end_ref):
        continue
      start, held, donate = self._start_of(index, seg, live)
      end_state = self._run_segment(seg, start, held, donate, self.run_steps_before(index))
      if any(s.init_from == seg.end_ref for s in self.plan.segments[index + 1:]):
        live[seg.end_ref] = end_state
      for ref in list(live):
        if not any(s.init_from == ref for s in self.plan.segments[index + 1:]):
          live.pop(ref)

  def run_extra(self, seg: Segment, held: Live | None = None) -> dict:
    """Run a decay branch outside the plan (after the fact, or live) from `seg.init_from`
    (held in memory, or restored); save and evaluate it. Returns its manifest entry."""
    if held is None:
      held = self._restore(seg.init_from)
      donate = True
    else:
      donate = False  # the main branch goes on from the same arrays
    run_steps = self.run_steps_upto(seg.init_from)
    self._run_segment(seg, seg.start, held, donate, run_steps, extra=True)
    self._report_saves(wait=True)
    return self.tree.entry(seg.end_ref)

  def run_steps_upto(self, ref: StateRef) -> int:
    """Updates the run had executed when it produced the saved state `ref`."""
    entry = self.tree.entry(ref)
    if entry is None:
      return ref.step
    return int(round(entry["run_flops"] / (self.tokens_per_step * self.flops_per_token)))

  def _run_segment(self, seg: Segment, start: int, held: Live, donate_first: bool,
                   run_steps_before: int, extra: bool = False) -> Live:
    """Train `seg` from `start` (its own start, or a resume point) and save its end state.

    `run_steps_before`: updates the run executed before this segment began.
    """
    cfg = self.cfg
    schedule = plan_lib.schedule_of(seg)
    first = self.steps.train(seg.schedule, donate=donate_first)
    rest = first if donate_first else self.steps.train(seg.schedule, donate=True)
    batch_sh = sharding.batch_sharding(self.mesh)
    run_steps = lambda step: run_steps_before + (step - seg.start)  # noqa: E731
    tags = {"extra": True} if extra else {}
    it = self.data.train_iterator(start, held.position)
    state = held.state
    self.writer.print(f"segment {seg.branch} [{start}, {seg.end})"
                      + ("" if start == seg.start else f", resumed at {start}"))
    t_window, n_window, wait_window = time.perf_counter(), 0, 0.0
    pending = None
    try:
      for step in range(start, seg.end):
        local = next(it)
        wait_window += it.last_wait_s
        batch = data_lib.to_global(local, batch_sh)
        state = faults.before_step(seg.branch, step + 1, state)
        state, metrics = (first if step == start else rest)(state, batch)
        n_window += 1
        self.steps_done_here += 1
        done = step + 1
        faults.after_step(seg.branch, done)
        if pending is not None:
          self._check_finite(pending)
        pending = (seg.branch, step, metrics)
        if done % cfg.train.log_every == 0 or done == seg.end:
          jax.block_until_ready(metrics)
          self._check_finite(pending)
          elapsed = time.perf_counter() - t_window
          remaining = self.plan.total_steps + self.extra_steps() - run_steps(done)
          self.log(seg, done, metrics, elapsed, n_window, wait_window, remaining)
          t_window, n_window, wait_window = time.perf_counter(), 0, 0.0
        if done == seg.end:
          break
        current = Live(state, it.position())
        if seg.branch == MAIN and cfg.train.eval_every and done % cfg.train.eval_every == 0:
          loss = self.eval_loss(state.params)
          self.writer.write(done, {"eval_loss": loss}, branch=seg.branch)
          self.writer.print(f"{seg.branch:>11} step {done:>6} | eval loss {loss:.4f}")
        lr = lambda: float(schedule(done - 1))  # noqa: E731
        if done % cfg.checkpoint.every == 0:
          self._check_finite(pending)
          self.save(seg, done, run_steps(done), current, lr(), **tags)
        if self._should_stop(done):
          self._check_finite(pending)
          self.save(seg, done, run_steps(done), current, lr(), **tags)
          self._report_saves(wait=True)
          raise Stop(f"stopped at {seg.branch}@{done}; the same command resumes")
        if seg.branch == MAIN and not extra:
          self._serve_live_requests(seg, done, run_steps(done), current, pending)
      self._check_finite(pending)
      end = Live(state, it.position())
      lr = float(schedule(seg.end - 1))
      loss = self.eval_loss(state.params)
      self.writer.write(seg.end, {"eval_loss": loss}, branch=seg.branch)
      if seg.decayed:
        start_loss = self._start_eval_loss(seg)
        gap = None if start_loss is None else start_loss - loss
        self.save(seg, seg.end, run_steps(seg.end), end, lr, decayed=True, eval_loss=loss,
                   start_eval_loss=start_loss, gap=gap, budget=seg.budget_served, **tags)
      else:
        self.save(seg, seg.end, run_steps(seg.end), end, lr, fork_point=True, eval_loss=loss,
                   **tags)
      return end
    finally:
      it.close()

  def _start_eval_loss(self, seg: Segment) -> float | None:
    """Eval loss of the state a decay branch started from (main at the fork), if known.

    The decay's `gap` = this minus the decayed loss: the "hill" component of the loss that
    the high LR kept and the decay removed (river-valley picture of Wen et al. 2024).
    """
    if seg.init_from is None:
      return None
    self._report_saves()
    entry = self.tree.entry(seg.init_from) or self.tree.pending_entry(seg.init_from)
    return None if entry is None else entry.get("eval_loss")

  def _serve_live_requests(self, seg: Segment, done: int, run_steps: int, current: Live,
                           pending) -> None:
    """Fork a decay branch now for each live request (`python -m wsdjax.branch --now`)."""
    new = live_branch.poll(self.workdir, every_step=jax.process_count() == 1, step=done,
                            log_every=self.cfg.train.log_every)
    for request in new:
      self._check_finite(pending)
      request = dataclasses.replace(request, fork_step=done, decay_steps=(
          request.decay_steps or live_branch.default_decay_steps(
              done, self.cfg.schedule.decay_fraction)))
      try:
        request.segment(self.cfg.schedule)
      except ValueError as e:  # e.g. a fork inside warmup: refuse it, keep training main
        self.writer.print(f"live request {request.id} refused: {e}")
        live_branch.refuse(self.workdir, request, str(e))
        continue
      request = live_branch.accept(self.workdir, request, done,
                                     self.cfg.schedule.decay_fraction)
      self.writer.print(f"live request: forking {request.branch} from main@{done}")
      self.save(seg, done, run_steps, current, float(plan_lib.schedule_of(seg)(done - 1)),
                 fork_point=True, eval_loss=self.eval_loss(current.state.params))
      self._report_saves(wait=True)
      self.run_extra(request.segment(self.cfg.schedule), held=current)
      live_branch.finish(self.workdir, request)

  def _check_finite(self, pending) -> None:
    branch, step, metrics = pending
    if not bool(metrics["finite"]):
      bad = ", ".join(f"{k}={float(v)}" for k, v in metrics.items()
                      if k != "finite" and not math.isfinite(float(v)))
      raise NonFiniteLoss(
          f"train: non-finite {bad or 'update'} at {branch} step {step + 1}; nothing after "
          "the last good checkpoint was saved; lower schedule.peak_lr or check the data, then "
          "rerun the same command to resume from that checkpoint")

  def log(self, seg, done, metrics, elapsed, n, wait, remaining) -> None:
    """One log row at step `done` of `seg`: the metrics, tokens/s and MFU over the `n` steps
    that took `elapsed` s (`wait` of them waiting on input), `remaining` steps to go; to
    TensorBoard, JSONL and the console."""
    tokens_per_s = n * self.tokens_per_step / max(elapsed, 1e-9)
    row = {k: float(v) for k, v in metrics.items() if k != "finite"}
    row["tokens_per_s"] = tokens_per_s
    row["mfu"] = metrics_lib.mfu(self.flops_per_token, tokens_per_s / jax.process_count())
    row["input_share"] = wait / max(elapsed, 1e-9)
    row["step_time_s"] = elapsed / max(n, 1)
    if self.data.entropy_rate is not None:
      row["gap_to_optimum"] = row["train_loss"] - self.data.entropy_rate
    self.writer.write(done, row, branch=seg.branch)
    self.writer.print(metrics_lib.progress_line(seg.branch, done, row,
                                                remaining * row["step_time_s"]))

  def summary(self) -> list[dict]:
    """Manifest entries of the decayed checkpoints, by step: the plan's, then those forked
    outside it (live or after the fact). Each records the budget it serves (`budget`; an
    entry written before budgets were recorded shows its step)."""
    rows = [entry for seg in self.plan.decayed
            if (entry := self.tree.entry(seg.end_ref)) is not None]
    planned = {(r["branch"], r["step"]) for r in rows}
    rows += [e for e in self.tree.manifest()
             if e.get("decayed") and e.get("extra") and (e["branch"], e["step"]) not in planned]
    return sorted(({"budget": r["step"]} | r for r in rows), key=lambda r: r["step"])


def results_table(rows: list[dict], entropy_rate: float | None = None) -> str:
  """The table of decayed checkpoints: budget, step, tokens, FLOPs of the run, eval loss."""
  head = f"{'checkpoint':>14} {'budget':>8} {'step':>8} {'tokens':>12} {'run FLOPs':>10} {'eval loss':>10}"
  if entropy_rate is not None:
    head += f" {'gap to opt':>10}"
  lines = [head]
  for r in rows:
    loss = r.get("eval_loss")
    line = (f"{r['branch']:>14} {r['budget']:>8} {r['step']:>8} {r['tokens']:>12,} "
            f"{r['run_flops']:>10.3g} {loss if loss is None else format(loss, '.4f'):>10}")
    if entropy_rate is not None and loss is not None:
      line += f" {loss - entropy_rate:>10.4f}"
    lines.append(line)
  return "\n".join(lines)


def train_and_evaluate(cfg, workdir: str, mesh=None, stream=None) -> list[dict]:
  """The library entry point behind `python -m wsdjax.train` (and the notebooks)."""
  workdir_path = epath.Path(workdir)
  fresh = not workdir_path.exists()
  check_run_config(cfg, workdir_path, None if mesh is None else mesh.devices.size)
  try:
    trainer = Trainer(cfg, workdir, mesh=mesh, stream=stream)  # data errors surface here
  except (config_lib.ConfigError, data_lib.DataConfigError):
    if fresh and workdir_path.exists() and jax.process_index() == 0:
      workdir_path.rmtree()  # a bad-input failure leaves no half-made run behind
    raise
  record_run_config(cfg, workdir_path)
  with trainer:
    rows = trainer.run()
    trainer.writer.print("decayed checkpoints:\n" + results_table(rows, trainer.data.entropy_rate))
    total = time.perf_counter() - trainer.started
    trainer.writer.print(
        f"done: {trainer.plan.total_steps} steps in the plan, {trainer.steps_done_here} run "
        f"now in {metrics_lib.format_duration(total)}; {trainer.steps.compiles} compiles "
        f"({trainer.steps.compile_seconds:.1f} s); checkpoints in {workdir_path / 'checkpoints'}")
    return rows


def check_run_config(cfg, workdir: epath.Path, device_count: int | None = None) -> None:
  """Validate `cfg` and refuse a workdir holding a different run; writes nothing."""
  config_lib.validate(cfg, device_count or jax.device_count())
  path = workdir / config_lib.RUN_CONFIG
  if path.exists():
    old = config_lib.load_run_config(workdir)
    conflicts = config_lib.resume_conflicts(old, cfg)
    if conflicts:
      raise config_lib.ConfigError(
          "workdir", f"{workdir} holds a run with a different config: {', '.join(conflicts)}",
          "use a new --workdir, or only extend schedule.budgets / change logging fields")


def record_run_config(cfg, workdir: epath.Path) -> None:
  """Write the run's config into its workdir (what resume and `branch` read back)."""
  path = workdir / config_lib.RUN_CONFIG
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(path, config_lib.to_json(cfg))
