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

USAGE = "usage: --workdir W [--json] [--verify [--record]]"
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON: one object per saved state.")
_VERIFY = flags.DEFINE_bool("verify", False, "Rehash every save against its integrity "
                            "record: intact, damaged or unverified (exit 2 unless all are "
                            "intact).")
_RECORD = flags.DEFINE_bool("record", False, "With --verify: write a fresh integrity record "
                            "of each unverified save Orbax reads (vouching for its files as "
                            "they are now).")


def main(argv):
  cli.run_workdir(argv, _WORKDIR.value, USAGE)
  if _RECORD.value and not _VERIFY.value:
    cli.fail("--record: only with --verify; pass --verify --record")
  from wsdjax.analysis import tree_listing
  if _VERIFY.value:
    tree_listing.verify(_WORKDIR.value, _RECORD.value, _JSON.value)
    return
  entries = tree_listing.load_entries(_WORKDIR.value)
  if _JSON.value:
    print(json.dumps(entries, indent=1))
  else:
    print(tree_listing.format_tree(entries))
    changes = tree_listing.format_config_changes(_WORKDIR.value)
    if changes:
      print(changes)
    note = tree_listing.unverified_note(_WORKDIR.value, entries)
    if note:
      print(note)


if __name__ == "__main__":
  cli.run(main)
