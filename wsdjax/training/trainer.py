"""The loop that runs a plan (the jitted steps: `wsdjax.training.steps`; the train state
and the optimizer: `wsdjax.training.state`).

`Trainer.run()` executes
the branch plan segment by segment: it restores or forks the start state, compiles the
step for the segment's LR schedule ahead of the loop, trains, saves into the checkpoint
tree, evaluates decayed checkpoints and records them in the manifest. A rerun of the same
command resumes where the plan stopped.

The rest is hooks (`Trainer.add_hook(fn, every=n, when=...)`, `wsdjax.training.hooks`),
which see a narrow context, never the trainer: after each step's eval and save, the
report of completed saves and live decay requests (`live_requests.step_hook`); at a
segment's end state, its EMA shadows' eval losses (`ema.end_hook`); once a main segment's
end is saved, the plan's merge there (`merges.planned_hook`).

Resume trusts only verified saves (`checkpoint.integrity`). Before the plan runs
(`check_saves`), every save without a readable integrity record is moved to
checkpoints/broken/ (kept, never deleted), one line each saying where and what the run
resumes from, and so is every decayed checkpoint or fork point whose files differ from
its record; the plan rebuilds what it needs. If no save of the run is verified (a run of
an older wsdjax, a deleted checkpoints/integrity/), nothing is moved: the run stops with
one line naming `python -m wsdjax.branches --workdir W --verify` (and `--record`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import jax
from etils import epath

from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax import data as data_lib
from wsdjax.checkpoint import lock as ckpt_lock
from wsdjax.config import stored as stored_config
from wsdjax.model import transformer as model_lib
from wsdjax.runtime import distributed, faults, sharding, signals
from wsdjax.runtime.errors import Fault, Stop
from wsdjax.schedule import plan as plan_lib
from wsdjax.schedule.plan import MAIN, Segment, StateRef
from wsdjax.training import ema as ema_lib
from wsdjax.training import hooks as hooks_lib
from wsdjax.training import live_requests, merges, resume
from wsdjax.training import metrics as metrics_lib
from wsdjax.training.state import TrainState, decay_overrides, init_state
from wsdjax.training.steps import StepCache, nonfinite_problem


# ---- the loop ----
class NonFiniteLoss(Fault, RuntimeError):
  """The loss or gradient norm went NaN/Inf; nothing non-finite was saved."""


@dataclasses.dataclass
class Live:
  """A state held in memory with the data position that goes with it."""
  state: TrainState
  position: dict


@dataclasses.dataclass
class _SegmentRun:
  """The running state of one segment's loop: its log window and the metrics of the last
  update, not yet checked for finiteness."""
  seg: Segment
  run_steps_before: int
  schedule: Any
  tags: dict
  extra: bool = False  # a decay branch outside the plan
  pending: tuple | None = None
  window: Any = None  # metrics_lib.TrainWindow of the steps since the last log row
  t_window: float = dataclasses.field(default_factory=time.perf_counter)
  n_window: int = 0
  wait_window: float = 0.0

  def run_steps(self, step: int) -> int:
    """Updates the run has executed once this segment reaches `step`."""
    return self.run_steps_before + (step - self.seg.start)

  def lr(self, done: int) -> float:
    """The LR of the update that produced `done`."""
    return float(self.schedule(done - 1))


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
    self.merge_sources = plan_lib.merge_sources(cfg.schedule)
    self._merge_steps = {s for steps in self.merge_sources.values() for s in steps}
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
    self._stop = signals.StopRequests()
    self._saves_checked = False  # check_saves() has run
    self.started = time.perf_counter()  # for the closing line's wall time
    self.steps_done_here = 0  # steps this process ran (a resumed run: since the resume)
    self.hooks = hooks_lib.Hooks()
    # After each step's eval and save: the saves that completed, then live requests.
    self.add_hook(self._report_completed_saves, every=1)
    self.add_hook(live_requests.step_hook(self.workdir, cfg.schedule, cfg.train.log_every))
    self.add_hook(ema_lib.end_hook(cfg.train.ema_decays), when="end")
    self.add_hook(merges.planned_hook(self.merge_sources, cfg.schedule.merge_window,
                                       cfg.schedule.merge_weights), when="done")

  def add_hook(self, fn, every: int = 1, when: str = "step") -> None:
    """Run `fn(context)` in the loop at `when` ("step", "end" or "done") at steps that are
    multiples of `every` (`wsdjax.training.hooks`); after the hooks added before it."""
    self.hooks.add(fn, every, when)

  def _context(self, seg: Segment, step: int, run_steps: int | None = None,
               live: Live | None = None, extra: bool = False,
               **services) -> hooks_lib.Context:
    """A hook's view of `seg` at `step`: the services every hook may use, and `services`."""
    return hooks_lib.Context(
        step=step, seg=seg, run_steps=run_steps, live=live, extra=extra, tree=self.tree,
        abstract=self.steps.abstract, eval_loss=self.eval_loss, print=self.writer.print,
        wait_for_saves=lambda: self.report_saves(wait=True), **services)

  def _step_context(self, run: "_SegmentRun", step: int, live: Live) -> hooks_lib.Context:
    """A step hook's view of a running segment at `step`: it may save `live` there, and
    run a decay branch from it."""
    run_steps = run.run_steps(step)
    return self._context(
        run.seg, step, run_steps, live, run.extra,
        save=lambda lr, **fields: self.save(run.seg, step, run_steps, live, lr, **fields),
        check_finite=lambda: self.check_finite(run.pending),
        run_branch=lambda seg: self.run_extra(seg, held=live))

  def close(self, failing: bool = False) -> None:
    """Close the checkpoint tree (which waits for pending saves) and the metric writer,
    then drop the workdir's writer lock. Raises the first error of those closes, unless
    `failing` (an error is already on its way: theirs must not replace it)."""
    errors = []
    for close in (self.tree.close, self.writer.close):
      try:
        close()
      except Exception as e:  # noqa: BLE001 - e.g. a full disk: the first one is reported
        errors.append(e)
    ckpt_lock.release(self.workdir)
    if errors and not failing:
      raise errors[0]

  def __enter__(self) -> "Trainer":
    return self

  def __exit__(self, kind, error, _tb) -> None:
    self.close(failing=error is not None)

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
    return metrics_lib.mean_eval_loss(step(params, b) for b in self._eval_batches)

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
    newest = resume.newest_save_inside(self.tree, seg)
    if newest is not None:
      return newest, self._restore(StateRef(seg.branch, newest)), True
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
    self.report_saves()

  def report_saves(self, wait: bool = False) -> None:
    """Print the saves that finished; in a single-process job, prune as they do (a
    multi-process job prunes at the end, where every process knows the same saves)."""
    done = self.tree.wait() if wait else self.tree.poll()
    for entry in done:
      what = "decayed checkpoint" if entry.get("decayed") else "checkpoint"
      extra = f", eval loss {entry['eval_loss']:.4f}" if entry.get("eval_loss") is not None else ""
      extra += "".join(f", {k} {v:.4f}" for k, v in entry.get("ema_eval_loss", {}).items())
      self.writer.print(f"saved {what} {entry['branch']}@{entry['step']}{extra}")
    if done and jax.process_count() == 1:
      self.tree.prune(self.cfg.checkpoint.keep, self.protected())

  def _report_completed_saves(self, _ctx: hooks_lib.Context) -> None:
    """A step hook: a save that completed enters the manifest now (`report_saves`)."""
    if self.tree.saving:
      self.report_saves()

  def protected(self) -> set[StateRef]:
    """Saves retention keeps besides decayed ones: the plan's start states and the main
    saves its merges average (`plan.merge_sources`)."""
    return self.plan.required_states() | {StateRef(MAIN, s) for s in self._merge_steps}

  # -- main entry --
  def run(self) -> list[dict]:
    """Execute the plan (resuming), then return the manifest entries of decayed checkpoints."""
    self.writer.print(model_lib.describe(self.cfg.model))
    self.writer.print(metrics_lib.parameter_table(self.steps.abstract.params))
    self.writer.print(plan_lib.describe(self.plan))
    if self.data.entropy_rate is not None:
      self.writer.print(f"data: bigram chain, entropy rate (optimal loss) "
                        f"{self.data.entropy_rate:.4f} nats/token")
    try:
      with self._stop:
        self.check_saves()
        while True:
          try:
            self._run_plan()
            break
          except ckpt.UnverifiedCheckpoint:  # a record lost while the run went on
            if not self._set_aside_unverified():
              raise
          except ckpt.BrokenCheckpoint as broken:  # set it aside, resume from an earlier save
            moved = self.tree.quarantine(broken.ref, str(broken))
            self.writer.print(f"{broken}; moved it to {moved} and resuming from the "
                              "previous complete save")
        self.report_saves(wait=True)
        self.tree.prune(self.cfg.checkpoint.keep, self.protected())
        return self.summary()
    finally:
      if not self.tree.failed:
        self.tree.wait()

  def compile_first_step(self) -> None:
    """Compile the train step of the first segment still to run (the loop reuses it)."""
    todo = [seg for seg in self.plan.segments if not self.tree.has(seg.end_ref)]
    if todo:
      self.steps.train(todo[0].schedule, donate=True, overrides=self._overrides(todo[0]))

  def _overrides(self, seg: Segment) -> tuple:
    """The optimizer overrides of `seg`: the decays' (`schedule.decay_overrides`), else ()."""
    return decay_overrides(self.cfg) if seg.decayed else ()

  def check_saves(self) -> None:
    """Once, before the plan runs: set aside the unverified saves (`_set_aside_unverified`)
    and the decayed checkpoints and fork points whose files changed since they were
    saved. CheckpointError, with nothing moved, if no save of the run is verified."""
    if self._saves_checked:
      return
    self._set_aside_unverified()
    self._set_aside_broken([seg.end_ref for seg in self.plan.segments])
    self._saves_checked = True

  def _set_aside_unverified(self) -> int:
    """Quarantine every save without a readable integrity record, so that resume never
    restores one unchecked, and say where each went and what the run resumes from; how
    many. If none of the run's saves has a record, refuse in one line and move nothing."""
    saves = [StateRef(b, s) for b in self.tree.branches() for s in self.tree.steps(b)]
    unverified = [(ref, record.why) for ref in saves
                  if not (record := self.tree.verification(ref)).verified]
    if not unverified:
      return 0
    if len(unverified) == len(saves):
      raise ckpt.CheckpointError(
          f"workdir: no save in {self.workdir} is verified ({len(saves)} save(s), none with "
          "a readable integrity record, e.g. a run of an older wsdjax, or "
          "checkpoints/integrity/ was deleted), so none is resumed from and nothing was "
          f"moved; check them with python -m wsdjax.branches --workdir {self.workdir} "
          "--verify, and add --record to vouch for them as they are")
    moved = [(ref, why, self.tree.quarantine(
        ref, f"checkpoint: {ref.branch}@{ref.step} is unverified ({why})"))
             for ref, why in unverified]
    then = self._resume_point()
    for ref, why, dest in moved:
      self.writer.print(f"checkpoint: {ref.branch}@{ref.step} is unverified ({why}), so "
                        f"it is not trusted; moved it to {dest}; {then}")
    return len(moved)

  def _resume_point(self) -> str:
    """What the plan goes on from, in words: its first unfinished segment's newest save,
    else that segment's start state (step 0 for the first)."""
    if all(self.tree.has(seg.end_ref) for seg in self.plan.segments):
      return "the plan needs nothing from it (its states are saved and verified)"
    ref = resume.resume_ref(self.plan, self.tree)
    return f"resuming from {ref.branch}@{ref.step}" if ref else "starting over from step 0"

  def _set_aside_broken(self, refs) -> None:
    """Quarantine the saved ones of `refs` (a finished run's decayed checkpoints and fork
    points) whose files changed since they were saved, so the plan rebuilds them."""
    for ref in refs:
      if self.tree.has(ref) and (damage := self.tree.damage(ref)):
        broken = ckpt.BrokenCheckpoint(ref, damage)
        moved = self.tree.quarantine(ref, str(broken))
        self.writer.print(f"{broken}; moved it to {moved}; rebuilding it")

  def _run_plan(self) -> None:
    """Run every segment of the plan not yet on disk, and live branches cut short."""
    live: dict[StateRef, Live] = {}
    for request in live_requests.accepted(self.workdir):  # live branches cut short
      if not self.tree.has(StateRef(request.branch, request.end)):
        self.run_extra(request.segment(self.cfg.schedule))
      live_requests.finish(self.workdir, request)
    for index, seg in enumerate(self.plan.segments):
      if self.tree.has(seg.end_ref):  # a rerun: e.g. a merge the last run did not get to
        self.hooks.run("done", self._context(seg, seg.end))
        continue
      start, held, donate = self._start_of(index, seg, live)
      end_state = self._run_segment(seg, start, held, donate, self.run_steps_before(index))
      self.hooks.run("done", self._context(seg, seg.end))
      if any(s.init_from == seg.end_ref for s in self.plan.segments[index + 1:]):
        live[seg.end_ref] = end_state
      for ref in list(live):
        if not any(s.init_from == ref for s in self.plan.segments[index + 1:]):
          live.pop(ref)

  def run_extra(self, seg: Segment, held: Live | None = None) -> dict:
    """Run a decay branch outside the plan (after the fact, or live) from `seg.init_from`
    (held in memory, or restored); save and evaluate it. Returns its manifest entry."""
    start, donate = seg.start, held is None  # held: main goes on from the same arrays
    newest = resume.newest_save_inside(self.tree, seg)
    if held is None and newest is not None:  # a rerun: go on from the branch's newest save
      start, held = newest, self._restore(StateRef(seg.branch, newest))
    elif held is None:
      held = self._restore(seg.init_from)
    run_steps = self.run_steps_upto(seg.init_from)
    self._run_segment(seg, start, held, donate, run_steps, extra=True)
    self.report_saves(wait=True)
    return self.tree.entry(seg.end_ref)

  def run_branch(self, seg: Segment) -> dict:
    """Run a decay branch after the fact as sturdily as the plan: SIGTERM/SIGINT save and
    raise Stop, a rerun goes on from the branch's newest save (or returns its entry at once
    when it is done), and retention prunes its intermediate saves."""
    entry = self.tree.entry(seg.end_ref)
    if entry is not None:
      return entry
    with self._stop:
      entry = self.run_extra(seg)
    self.tree.prune(self.cfg.checkpoint.keep, self.protected())
    return entry

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
    tags = {"extra": True, "schedule": json.loads(json.dumps(seg.schedule_dict()))}
    overrides = self._overrides(seg)
    run = _SegmentRun(seg, run_steps_before, seg.schedule.build(),
                      (tags if extra else {}) | (
                          {"decay_overrides": dict(overrides)} if overrides else {}), extra)
    first = self.steps.train(seg.schedule, donate=donate_first, overrides=overrides)
    rest = first if donate_first else self.steps.train(seg.schedule, donate=True,
                                                       overrides=overrides)
    it = self.data.train_iterator(start, held.position)
    state = held.state
    self.writer.print(f"segment {seg.branch} [{start}, {seg.end})"
                      + ("" if start == seg.start else f", resumed at {start}"))
    try:
      for step in range(start, seg.end):
        state, metrics = self._step(run, step, state, it, first if step == start else rest)
        done = step + 1
        self._log_window(run, done, metrics)
        if done == seg.end:
          break
        current = Live(state, it.position())
        self._eval_main(seg, done, state)
        self._save_or_stop(run, done, current)
        self.hooks.run("step", self._step_context(run, done, current))
      return self._finish_segment(run, Live(state, it.position()))
    finally:
      it.close()

  def _step(self, run: "_SegmentRun", step: int, state, it, compiled):
    """Next batch, one update (producing `step + 1`), and the finiteness check of the
    previous update's metrics (checked one step late, so the host never waits)."""
    local = next(it)
    run.wait_window += it.last_wait_s
    batch = data_lib.to_global(local, self.steps.batch_sh)
    state = faults.before_step(run.seg.branch, step + 1, state)
    state, metrics = compiled(state, batch)
    run.window = metrics_lib.accumulate(run.window, metrics)
    run.n_window += 1
    self.steps_done_here += 1
    faults.after_step(run.seg.branch, step + 1)
    if run.pending is not None:
      self.check_finite(run.pending)
    run.pending = (run.seg.branch, step, metrics)
    return state, metrics

  def _log_window(self, run: "_SegmentRun", done: int, metrics) -> None:
    """Every `log_every` steps and at the segment's end: the window's metrics."""
    if done % self.cfg.train.log_every and done != run.seg.end:
      return
    jax.block_until_ready(metrics)
    self.check_finite(run.pending)
    elapsed = time.perf_counter() - run.t_window
    if run.tags.get("extra"):  # a branch outside the plan: its own steps
      remaining = run.seg.end - done
    else:
      remaining = self.plan.total_steps + self.extra_steps() - run.run_steps(done)
    self.log(run.seg, done, run.window.compute(), elapsed, run.n_window, run.wait_window,
             remaining)
    run.window, run.t_window, run.n_window, run.wait_window = None, time.perf_counter(), 0, 0.0

  def _eval_main(self, seg: Segment, done: int, state) -> None:
    """Every `eval_every` steps of the main branch: the eval loss."""
    if seg.branch == MAIN and self.cfg.train.eval_every and done % self.cfg.train.eval_every == 0:
      loss = self.eval_loss(state.params)
      self.writer.write(done, {"eval_loss": loss}, branch=seg.branch)
      self.writer.print(f"{seg.branch:>11} step {done:>6} | eval loss {loss:.4f}")

  def _save_or_stop(self, run: "_SegmentRun", done: int, current: Live) -> None:
    """Every `checkpoint.every` steps (and at merge sources) a save; on a stop request a
    save, then `Stop`."""
    stop = self._stop.requested(done, self.cfg.train.log_every)
    merge_source = run.seg.branch == MAIN and done in self._merge_steps
    if done % self.cfg.checkpoint.every == 0 or stop or merge_source:
      self.check_finite(run.pending)
      self.save(run.seg, done, run.run_steps(done), current, run.lr(done), **run.tags)
    if stop:
      self.report_saves(wait=True)
      raise Stop(f"stopped at {run.seg.branch}@{done}; the same command resumes")

  def _finish_segment(self, run: "_SegmentRun", end: Live) -> Live:
    """The segment's end state: evaluated and saved as a decayed checkpoint or a fork
    point."""
    seg = run.seg
    self.check_finite(run.pending)
    loss = self.eval_loss(end.state.params)
    row, tags = {"eval_loss": loss}, dict(run.tags)
    at_end = self._context(seg, seg.end, run.run_steps(seg.end), end, run.extra,
                           check_finite=lambda: self.check_finite(run.pending))
    for found in self.hooks.run("end", at_end):
      row, tags = row | found.metrics, tags | found.entry
    self.writer.write(seg.end, row, branch=seg.branch)
    if seg.decayed:
      start_loss = self._start_eval_loss(seg)
      gap = None if start_loss is None else start_loss - loss
      self.save(seg, seg.end, run.run_steps(seg.end), end, run.lr(seg.end), decayed=True,
                eval_loss=loss, start_eval_loss=start_loss, gap=gap,
                budget=seg.budget_served, **tags)
    else:
      self.save(seg, seg.end, run.run_steps(seg.end), end, run.lr(seg.end), fork_point=True,
                eval_loss=loss, **tags)
    return end

  def _start_eval_loss(self, seg: Segment) -> float | None:
    """Eval loss of the state a decay branch started from (main at the fork), if known.

    The decay's `gap` = this minus the decayed loss: the "hill" component of the loss that
    the high LR kept and the decay removed (river-valley picture of Wen et al. 2024).
    """
    if seg.init_from is None:
      return None
    self.report_saves()
    entry = self.tree.entry(seg.init_from) or self.tree.pending_entry(seg.init_from)
    return None if entry is None else entry.get("eval_loss")

  def check_finite(self, pending) -> None:
    """Raise NonFiniteLoss if the pending (branch, step, metrics) update was not finite."""
    why = nonfinite_problem(*pending, peak_lr=self.cfg.schedule.peak_lr)
    if why:
      raise NonFiniteLoss(why)

  def log(self, seg, done, metrics, elapsed, n, wait, remaining) -> None:
    """A log row (`metrics_lib.log_row`) at step `done`: TensorBoard, JSONL, console."""
    row = metrics_lib.log_row(metrics, n, self.tokens_per_step, elapsed, wait,
                              self.flops_per_token, self.data.entropy_rate)
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


def train_and_evaluate(cfg, workdir: str, mesh=None, stream=None) -> list[dict]:
  """The library entry point behind `python -m wsdjax.train` (and the notebooks)."""
  workdir_path = epath.Path(workdir)
  fresh = not workdir_path.exists()
  changes = resume.check_run_config(cfg, workdir_path, None if mesh is None else mesh.devices.size)
  trainer = None
  try:  # start-up: nothing of the run is recorded until its first step is compiled
    trainer = Trainer(cfg, workdir, mesh=mesh, stream=stream)  # data errors surface here
    faults.at_startup()
    trainer.check_saves()  # before a compile: a run with no verified save stops at once
    trainer.compile_first_step()
  except BaseException:  # bad input, a compile that does not fit, Ctrl-C
    if trainer is not None:
      trainer.close(failing=True)
    if fresh and workdir_path.exists() and jax.process_index() == 0:
      workdir_path.rmtree()  # no half-made run left behind
    raise
  with trainer:
    line = resume.record_config_changes(trainer.plan, trainer.tree, changes)
    if line:
      trainer.writer.print(line)
    stored_config.record_run_config(cfg, workdir_path)
    rows = trainer.run()
    trainer.writer.print("decayed checkpoints:\n" + metrics_lib.results_table(
        rows, trainer.data.entropy_rate))
    steps = [r["step"] for r in rows] + list(cfg.schedule.budgets)
    if others := merges.average_rows(trainer.tree.manifest(), steps):
      trainer.writer.print("merges and EMA shadows at the budgets:\n"
                           + metrics_lib.results_table(others, trainer.data.entropy_rate))
    total = time.perf_counter() - trainer.started
    trainer.writer.print(
        f"done: {trainer.plan.total_steps} steps in the plan, {trainer.steps_done_here} run "
        f"now in {metrics_lib.format_duration(total)}; {trainer.steps.compiles} compiles "
        f"({trainer.steps.compile_seconds:.1f} s); checkpoints in {workdir_path / 'checkpoints'}")
    return rows
