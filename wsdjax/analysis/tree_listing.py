"""A run's checkpoint tree, listed (behind `python -m wsdjax.branches`): every finished save
with its path, config changes and integrity status (`load_entries`), the branches as an
indented tree (`format_tree`), and the `--verify` report (`verify`)."""

from __future__ import annotations

import json

from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax.checkpoint import verify as verify_lib
from wsdjax.training import ema


def require_checkpoints(workdir) -> None:
  """CheckpointError (exit 2) unless `workdir` holds a run's checkpoints/ folder."""
  if not ckpt.checkpoint_dir(workdir).exists():
    raise ckpt.CheckpointError(f"--workdir: {workdir} has no checkpoints/ folder; pass the "
                               f"workdir of a run started with python -m wsdjax.train")


def load_entries(workdir) -> list[dict]:
  """Manifest entries of every finished save in `workdir` (rebuilt from disk if needed),
  each with the `path` of its state item, the config changes a resume made from it, and
  its verification status from its integrity record alone (`verified`, `integrity`)."""
  require_checkpoints(workdir)
  with ckpt.CheckpointTree(workdir, read_only=True) as tree:
    changes = {}
    for c in tree.config_changes():
      changes.setdefault((c["branch"], c["step"]), []).append(c["changes"])
    saves = []
    for e in tree.manifest():
      ref = ckpt.StateRef(e["branch"], e["step"])
      record = tree.verification(ref)
      saves.append(dict(e, path=str(tree.path(ref) / "state"), verified=record.verified,
                        integrity=record.status)
                   | ({"config_changes": changes[key]} if (key := (ref.branch, ref.step))
                      in changes else {}))
  return saves + ema.shadow_entries(saves)


def format_tree(entries: list[dict]) -> str:
  """Branches as a tree: main first, each decay branch under its parent's fork step."""
  by_branch: dict[str, list[dict]] = {}
  for e in entries:
    by_branch.setdefault(e["branch"], []).append(e)
  lines = []

  def fmt(e: dict) -> str:
    loss = "" if e.get("eval_loss") is None else f"  eval {e['eval_loss']:.4f}"
    tags = [t for t in ("decayed", "fork_point") if e.get(t)] + (
        [f"shadow in {e['source']['branch']}@{e['source']['step']}"] if e.get("source") else [])
    if "verified" in e:
      tags.append("verified" if e["verified"] else "unverified: " + (
          "no integrity record" if e["integrity"] == "missing" else
          "integrity record unreadable"))
    return (f"@{e['step']:<7} tokens {e['tokens']:>12,}  run FLOPs {e['run_flops']:.3g}  "
            f"lr {e['lr']:.2e}{loss}{'  [' + ', '.join(tags) + ']' if tags else ''}")

  def branch_line(name: str, depth: int) -> None:
    states = by_branch.get(name, [])
    first = states[0] if states else {}
    origin = ("" if first.get("parent") is None
              else f"  (EMA of the params, decay {first['ema_decay']:g})" if "source" in first
              else f"  (from {first['parent']}@{first['fork_step']})")
    lines.append("  " * depth + f"{name}{origin}")
    for e in states:
      lines.append("  " * depth + "  " + fmt(e))

  def order(b: str):
    tail = b.split("-", 1)[-1]
    return (b != "main", b.startswith("ema-"), float(tail) if "-" in b else 0.0)

  names = sorted(by_branch, key=order)
  for name in names:
    branch_line(name, 0 if name == "main" else 1)
  return "\n".join(lines) if lines else "(no saved states yet)"


def format_config_changes(workdir) -> str:
  """One line per resume that changed fields, and the state it went on from."""
  with ckpt.CheckpointTree(workdir, read_only=True) as tree:
    records = tree.config_changes()
  return "\n".join(
      "config change" + (f" from {c['branch']}@{c['step']}" if c["branch"] else "") + ": "
      + ", ".join(f"{f} {a!r} -> {b!r}" for f, (a, b) in c["changes"].items())
      for c in records)


def unverified_note(workdir, entries: list[dict]) -> str:
  """A closing line when some listed state is unverified: what it means and the remedy."""
  if all(e.get("verified", True) for e in entries):
    return ""
  return ("unverified states have no readable integrity record, so nothing can tell whether "
          "their files changed (the train command does not resume from them); check them "
          f"with python -m wsdjax.branches --workdir {workdir} --verify, and add --record to "
          "vouch for them as they are")


def verify(workdir: str, record: bool, as_json: bool) -> None:
  """`--verify [--record]`: one line per save and a summary (or JSON); CheckpointError
  (exit 2, one line) if a save is damaged or stays unverified."""
  require_checkpoints(workdir)
  checksums = True
  if record:  # the run's own setting: sizes only where it records sizes only
    checksums = bool(config_lib.load_run_config(workdir).checkpoint.checksums)
  found = verify_lib.verify(workdir, record, checksums, say=print)
  if as_json:
    print(json.dumps([{"branch": f.ref.branch, "step": f.ref.step, "status": f.status,
                       "detail": f.detail} for f in found], indent=1))
  else:
    for f in found:
      print(f.line())
    print(verify_lib.summary(found))
  problem = verify_lib.problem(workdir, found)
  if problem:
    raise problem
