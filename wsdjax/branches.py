"""`python -m wsdjax.branches --workdir W [--json] [--verify [--record]]`: the checkpoint
tree of a run.

Prints each branch with its saved states (step, tokens, FLOPs, LR, eval loss, and whether
the state is verified: it has a readable integrity record, read alone, files unread),
decay branches indented under the branch they forked from; `--json` prints a list with one
object per saved state (keys: branch, step, parent, fork_step, tokens, flops, run_flops,
lr, eval_loss, decayed, fork_point, gap, config_changes (where a resume went on from this
state with changed fields: a list of {field: [old, new]}), verified (true/false),
integrity ("recorded" | "missing" | "unreadable"), and path: the state's Orbax
checkpoint, which `orbax.checkpoint.StandardCheckpointer().restore(path)` reads without
wsdjax). EMA shadows (`train.ema_decays`) are listed as branches `ema-<decay>` with the
`source` state that holds them (at `path`, under `ema/<index>`).

`--verify` rehashes every save against its record and prints one line per save: intact,
damaged (what differs) or unverified (why), then a summary line (`--json`: a list of
{branch, step, status, detail}). Exit 0 if every save is intact; else exit 2 with one line
on stderr naming the damaged and unverified saves and the remedy, so scripts notice.
`--verify --record` (holding the workdir's writer lock: not while a run writes it) first
writes a fresh record of each unverified save whose meta item and state metadata Orbax
reads back, printing a line for each: it vouches for those files as they are now.
Damaged saves are never recorded again; it exits 0 if none is damaged and none stays
unverified.
"""

from __future__ import annotations

import json

from absl import flags

from wsdjax.runtime import cli

_WORKDIR = _JSON = _VERIFY = _RECORD = None
USAGE = "usage: --workdir W [--json] [--verify [--record]]"


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program (imports stay flag-free)."""
  global _WORKDIR, _JSON, _VERIFY, _RECORD
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
  _JSON = flags.DEFINE_bool("json", False, "Print JSON: one object per saved state.")
  _VERIFY = flags.DEFINE_bool("verify", False, "Rehash every save against its integrity "
                              "record: intact, damaged or unverified (exit 2 unless all "
                              "are intact).")
  _RECORD = flags.DEFINE_bool("record", False, "With --verify: write a fresh integrity record "
                              "of each unverified save Orbax reads (vouching for its files "
                              "as they are now).")


def _require_checkpoints(workdir) -> None:
  from wsdjax import checkpoint as ckpt
  if not ckpt.checkpoint_dir(workdir).exists():
    raise ckpt.CheckpointError(f"--workdir: {workdir} has no checkpoints/ folder; pass the "
                               f"workdir of a run started with python -m wsdjax.train")


def load_entries(workdir) -> list[dict]:
  """Manifest entries of every finished save in `workdir` (rebuilt from disk if needed),
  each with the `path` of its state item, the config changes a resume made from it, and
  its verification status from its integrity record alone (`verified`, `integrity`)."""
  from wsdjax import checkpoint as ckpt
  _require_checkpoints(workdir)
  from wsdjax.training import ema
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
  from wsdjax import checkpoint as ckpt
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
  from wsdjax import config as config_lib
  from wsdjax.checkpoint import verify as verify_lib
  _require_checkpoints(workdir)
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


def main(argv):
  cli.run_workdir(argv, _WORKDIR.value, USAGE)
  if _RECORD.value and not _VERIFY.value:
    cli.fail("--record: only with --verify; pass --verify --record")
  if _VERIFY.value:
    verify(_WORKDIR.value, _RECORD.value, _JSON.value)
    return
  entries = load_entries(_WORKDIR.value)
  if _JSON.value:
    print(json.dumps(entries, indent=1))
  else:
    print(format_tree(entries))
    changes = format_config_changes(_WORKDIR.value)
    if changes:
      print(changes)
    note = unverified_note(_WORKDIR.value, entries)
    if note:
      print(note)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
