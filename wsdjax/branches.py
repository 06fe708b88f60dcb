"""`python -m wsdjax.branches --workdir W [--json]`: the checkpoint tree of a run.

Prints each branch with its saved states (step, tokens, FLOPs, LR, eval loss), decay
branches indented under the branch they forked from; `--json` prints a list with one
object per saved state (keys: branch, step, parent, fork_step, tokens, flops, run_flops,
lr, eval_loss, decayed, fork_point, gap, config_changes (where a resume went on from this
state with changed fields: a list of {field: [old, new]}), and path: the state's Orbax
checkpoint, which `orbax.checkpoint.StandardCheckpointer().restore(path)` reads without
wsdjax). EMA shadows (`train.ema_decays`) are listed as branches `ema-<decay>` with the
`source` state that holds them (at `path`, under `ema/<index>`).
"""

from __future__ import annotations

import json

from absl import flags

from wsdjax import cli

_WORKDIR = _JSON = None


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program (imports stay flag-free)."""
  global _WORKDIR, _JSON
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
  _JSON = flags.DEFINE_bool("json", False, "Print JSON: one object per saved state.")


def load_entries(workdir) -> list[dict]:
  """Manifest entries of every finished save in `workdir` (rebuilt from disk if needed),
  each with the `path` of its state item and the config changes a resume made from it."""
  from wsdjax import checkpoint as ckpt
  root = ckpt.checkpoint_dir(workdir)
  if not root.exists():
    raise ckpt.CheckpointError(f"--workdir: {workdir} has no checkpoints/ folder; pass the "
                               f"workdir of a run started with python -m wsdjax.train")
  from wsdjax import ema
  with ckpt.CheckpointTree(workdir, read_only=True) as tree:
    changes = {}
    for c in tree.config_changes():
      changes.setdefault((c["branch"], c["step"]), []).append(c["changes"])
    saves = [dict(e, path=str(tree.path(ckpt.StateRef(e["branch"], e["step"])) / "state"))
             | ({"config_changes": changes[key]} if (key := (e["branch"], e["step"])) in changes
                else {})
             for e in tree.manifest()]
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


def main(argv):
  cli.run_workdir(argv, _WORKDIR.value, "usage: --workdir W [--json]")
  entries = load_entries(_WORKDIR.value)
  if _JSON.value:
    print(json.dumps(entries, indent=1))
  else:
    print(format_tree(entries))
    changes = format_config_changes(_WORKDIR.value)
    if changes:
      print(changes)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
