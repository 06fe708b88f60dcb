"""Live decay requests: `python -m wsdjax.branch --now` asks a running job to fork.

Protocol (files, so it works on any shared filesystem and survives restarts):
  WORKDIR/requests/<id>.json            written by the client (atomically): new request
  ... rewritten with "fork_step"        when the job accepts it (main saved there)
  WORKDIR/requests/done/<id>.json       once the decay branch is saved and evaluated,
                                        or with "error" set if the job refused it
A job killed after accepting a request runs that branch first when it resumes. Single-
process jobs look for requests after every step; multi-process jobs at every log step
(process 0 reads, every process gets its answer through one collective).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import jax
from etils import epath

from wsdjax.runtime import files

from wsdjax.schedule import plan as plan_lib
from wsdjax.runtime import distributed
from wsdjax.training import hooks

REQUESTS = "requests"


@dataclasses.dataclass(frozen=True)
class Request:
  id: str
  decay_steps: int | None = None
  decay_shape: str | None = None
  min_lr_ratio: float | None = None
  fork_step: int | None = None
  error: str | None = None  # set when the job refused the request (moved to done/ as is)

  @property
  def end(self) -> int:
    return int(self.fork_step) + int(self.decay_steps)

  @property
  def branch(self) -> str:
    return plan_lib.decay_branch_name(self.end)

  def segment(self, schedule_cfg) -> plan_lib.Segment:
    return plan_lib.after_the_fact(schedule_cfg, self.fork_step, self.decay_steps,
                                   self.decay_shape, self.min_lr_ratio)


def default_decay_steps(fork_step: int, decay_fraction: float) -> int:
  """D such that the decay is `decay_fraction` of the budget it ends at: D = f·(N + D)."""
  return max(1, round(decay_fraction * fork_step / (1.0 - min(decay_fraction, 0.99))))


def _dir(workdir) -> epath.Path:
  return epath.Path(workdir) / REQUESTS


def _read(path: epath.Path) -> Request:
  return Request(**json.loads(path.read_text()))


def _write(path: epath.Path, request: Request) -> None:
  files.atomic_write_text(path, json.dumps(dataclasses.asdict(request)))


def finished(workdir, request_id: str) -> Request | None:
  """The request `request_id` as the job finished it (its branch, or its error), or None
  while it has not."""
  path = _dir(workdir) / "done" / f"{request_id}.json"
  return _read(path) if path.exists() else None


def submit(workdir, decay_steps=None, decay_shape=None, min_lr_ratio=None) -> Request:
  """Ask the job running in `workdir` to fork a decay branch at its next step."""
  request = Request(f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:6]}", decay_steps,
                    decay_shape, min_lr_ratio)
  _dir(workdir).mkdir(parents=True, exist_ok=True)
  _write(_dir(workdir) / f"{request.id}.json", request)
  return request


def withdraw(workdir, request_id: str) -> bool:
  """Take back a request the job has not accepted yet; False if it has (or it is gone)."""
  path = _dir(workdir) / f"{request_id}.json"
  if not path.exists() or _read(path).fork_step is not None:
    return False
  path.unlink(missing_ok=True)
  return True


def _listed(workdir) -> list[Request]:
  folder = _dir(workdir)
  if not folder.exists():
    return []
  return sorted((_read(p) for p in folder.glob("*.json")), key=lambda r: r.id)


def pending(workdir) -> list[Request]:
  """Requests not yet accepted by the job."""
  return [r for r in _listed(workdir) if r.fork_step is None]


def accepted(workdir) -> list[Request]:
  """Requests accepted (fork step fixed) whose branch is not finished."""
  return [r for r in _listed(workdir) if r.fork_step is not None]


def poll(workdir, every_step: bool, step: int, log_every: int) -> list[Request]:
  """New requests, identical on every process (see module docstring for when it looks)."""
  if every_step:
    return pending(workdir)
  if step % log_every:
    return []
  mine = [dataclasses.asdict(r) for r in pending(workdir)] if jax.process_index() == 0 else []
  return [Request(**r) for r in distributed.allgather_json(mine)[0]]


def accept(workdir, request: Request, fork_step: int, decay_fraction: float) -> Request:
  """Fix the fork step (and a default decay length) of `request` and record it."""
  decay = request.decay_steps or default_decay_steps(fork_step, decay_fraction)
  request = dataclasses.replace(request, fork_step=int(fork_step), decay_steps=int(decay))
  if jax.process_index() == 0:
    _write(_dir(workdir) / f"{request.id}.json", request)
  return request


def refuse(workdir, request: Request, error: str) -> None:
  """Answer `request` with an error instead of a branch (the job goes on with main)."""
  finish(workdir, dataclasses.replace(request, error=error))


def finish(workdir, request: Request) -> None:
  """Move a request whose branch is saved to requests/done/."""
  if jax.process_index() != 0:
    return
  done = _dir(workdir) / "done"
  done.mkdir(parents=True, exist_ok=True)
  src = _dir(workdir) / f"{request.id}.json"
  _write(done / f"{request.id}.json", request)
  if src.exists():
    src.unlink()


def step_hook(workdir, schedule_cfg, log_every: int):
  """A "step" hook (`hooks`) serving the requests of `workdir` on the planned main branch
  (`serve`); `schedule_cfg`: the run's `cfg.schedule`, `log_every`: `cfg.train.log_every`."""
  def serve_requests(ctx: hooks.Context) -> None:
    if ctx.branch == plan_lib.MAIN and not ctx.extra:
      serve(ctx, workdir, schedule_cfg, log_every)
  return serve_requests


def serve(ctx: hooks.Context, workdir, schedule_cfg, log_every: int) -> None:
  """Fork a decay branch now for each new request of `workdir`, from the main state
  `ctx.live` at step `ctx.step` (saved there as a fork point first)."""
  seg, done = ctx.seg, ctx.step
  new = poll(workdir, every_step=jax.process_count() == 1, step=done, log_every=log_every)
  for request in new:
    ctx.check_finite()
    request = dataclasses.replace(request, fork_step=done, decay_steps=(
        request.decay_steps or default_decay_steps(done, schedule_cfg.decay_fraction)))
    try:
      request.segment(schedule_cfg)
      if ctx.tree.steps(request.branch):  # e.g. two requests queued for the same fork
        raise ValueError(f"branch {request.branch} already exists (an earlier request "
                         "made it); ask for another --decay-steps")
    except ValueError as e:  # e.g. a fork inside warmup: refuse it, keep training main
      ctx.print(f"live request {request.id} refused: {e}")
      refuse(workdir, request, str(e))
      continue
    request = accept(workdir, request, done, schedule_cfg.decay_fraction)
    ctx.print(f"live request: forking {request.branch} from main@{done}")
    ctx.save(float(seg.schedule.build()(done - 1)),
             fork_point=True, eval_loss=ctx.eval_loss(ctx.live.state.params))
    ctx.wait_for_saves()
    ctx.run_branch(request.segment(schedule_cfg))
    finish(workdir, request)
