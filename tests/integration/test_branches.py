"""The branch tree end to end: saved states and manifest per strategy, the `branches` and
`branch` CLIs, restore onto a mesh, decay after the fact and live, budget extension."""

import json
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, one_device_mesh, run_cli as cli, subprocess_env
from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax.runtime import sharding
from wsdjax.training import trainer

KEYS = {"branch", "step", "parent", "fork_step", "tokens", "flops", "run_flops", "lr",
        "eval_loss"}


def train(cfg, workdir):
  return trainer.train_and_evaluate(cfg, str(workdir), mesh=one_device_mesh())


def manifest(workdir):
  return {(e["branch"], e["step"]): e for e in
          json.loads((workdir / "checkpoints" / "manifest.json").read_text())}


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def assert_same_state(a, b):
  la, lb = leaves(a), leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def test_wsd_tree_manifest_and_retention(tiny_config, tmp_path):
  cfg = tiny_config
  cfg.schedule.update(name="wsd", budgets=(20, 40))
  cfg.checkpoint.update(every=5, keep=1)
  rows = train(cfg, tmp_path)
  assert [(r["branch"], r["budget"], r["step"]) for r in rows] == [("decay-20", 20, 20),
                                                                   ("decay-40", 40, 40)]
  m = manifest(tmp_path)
  for entry in m.values():
    assert KEYS <= set(entry)
  d20, d40 = m[("decay-20", 20)], m[("decay-40", 40)]
  assert (d20["parent"], d20["fork_step"], d20["decayed"]) == ("main", 18, True)
  assert (d40["parent"], d40["fork_step"]) == ("main", 36)
  tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_len
  assert d20["tokens"] == 20 * tokens_per_step
  # The run's compute when decay-40 ends: main to 36 plus both decays (2 + 4) = 42 steps.
  assert d40["run_flops"] == pytest.approx(42 / 40 * d40["flops"])
  assert d20["run_flops"] == pytest.approx(d20["flops"])  # main to 18, then 2 decay steps
  assert d20["eval_loss"] > d40["eval_loss"] > 0
  assert d20["gap"] == pytest.approx(m[("main", 18)]["eval_loss"] - d20["eval_loss"])
  # lr = LR of the last update that produced the state: update 19, halfway down the decay.
  assert d20["lr"] == pytest.approx(0.01 - 0.5 * (0.01 - 0.001))
  # Retention: fork points and decayed states stay; periodic main saves beyond keep=1 and
  # intermediate decay-branch saves go.
  assert set(m) == {("main", 18), ("main", 36), ("decay-20", 20), ("decay-40", 40)}
  tree = ckpt.CheckpointTree(tmp_path, read_only=True)
  assert tree.steps("main") == [18, 36] and tree.steps("decay-40") == [40]


def test_branches_cli_prints_tree_and_json(tiny_config, tmp_path):
  tiny_config.schedule.budgets = (20,)
  train(tiny_config, tmp_path)
  out = cli("wsdjax.branches", "--workdir", str(tmp_path), "--json")
  assert out.returncode == 0, out.stderr
  rows = json.loads(out.stdout)
  assert {r["branch"] for r in rows} == {"main", "decay-20"}
  assert all(KEYS <= set(r) for r in rows)
  text = cli("wsdjax.branches", "--workdir", str(tmp_path)).stdout
  assert "decay-20  (from main@18)" in text and "decayed" in text
  # Every listed state restores with plain Orbax in a process that never imports wsdjax,
  # equal to wsdjax's restore.
  for r in rows:
    plain = plain_orbax_restore(r["path"], tmp_path / f"{r['branch']}-{r['step']}.npz")
    ours = jax.tree_util.tree_flatten_with_path(ckpt.restore(str(tmp_path), r["branch"],
                                                             r["step"]))[0]
    ours = {"/".join(_key_name(k) for k in path): np.asarray(x) for path, x in ours}
    assert sorted(plain) == sorted(ours) and len(ours) > 10
    for key, x in ours.items():
      np.testing.assert_array_equal(plain[key], x, err_msg=key)
  bad = cli("wsdjax.branches", "--workdir", str(tmp_path / "nope"))
  assert bad.returncode == 2 and bad.stderr.startswith("wsdjax: --workdir:")
  assert "Traceback" not in bad.stderr


_PLAIN_ORBAX = """
import sys, jax, numpy as np, orbax.checkpoint as ocp
state = ocp.StandardCheckpointer().restore(sys.argv[1])
assert not any(m.startswith("wsdjax") for m in sys.modules), "imported wsdjax"
flat = jax.tree_util.tree_flatten_with_path(state)[0]
np.savez(sys.argv[2], **{"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): x
                         for p, x in flat})
"""


def _key_name(key) -> str:
  """A path element as its name or index (an attribute, a dict key or a list index)."""
  for attr in ("name", "key", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def plain_orbax_restore(path, out) -> dict:
  """Restore `path` with orbax alone, in a fresh process: leaf path -> array."""
  done = subprocess.run([sys.executable, "-c", _PLAIN_ORBAX, path, str(out)], cwd="/",
                        env=subprocess_env(1), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  with np.load(out) as arrays:
    return dict(arrays)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_restore_as_host_arrays_and_onto_a_mesh(tiny_config, tmp_path):
  tiny_config.schedule.budgets = (20,)
  train(tiny_config, tmp_path)
  host = ckpt.restore(str(tmp_path), branch="decay-20")
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))
  assert int(host.step) == 20
  cfg = config_lib.load_run_config(tmp_path)
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  mesh = sharding.make_mesh(cfg.mesh)
  on_mesh = ckpt.restore(str(tmp_path), branch="decay-20", mesh=mesh)
  emb = on_mesh.params["embed"]["embedding"]
  assert emb.sharding.mesh.shape == mesh.shape and len(emb.addressable_shards) == 8
  assert_same_state(host, on_mesh)
  latest_main = ckpt.restore(str(tmp_path))  # default: main, its latest save
  assert int(latest_main.step) == 18
  with pytest.raises(ckpt.CheckpointError, match="decay-99"):
    ckpt.restore(str(tmp_path), branch="decay-99")


SHRINK = ("--config.model.seq_len=32", "--config.train.global_batch_size=8",
          "--config.train.log_every=5")


def train_cli(workdir, *overrides, config="configs/tiny.py"):
  out = cli("wsdjax.train", "--config", config, "--workdir", str(workdir), *SHRINK, *overrides)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_branch_after_the_fact_equals_the_planned_decay(tmp_path):
  """A WSD decay planned at B=24 (fork 21) and one made later from a saved main@21 of a
  constant-LR run are the same computation: same state, same data stream, same LR.
  (Both run as 1-device processes: XLA:CPU's numerics depend on the device count.)"""
  planned = tmp_path / "planned"
  train_cli(planned, "--config.schedule.name=wsd", "--config.schedule.budgets=(24,)",
            "--config.schedule.decay_steps=3", "--config.schedule.decay_shape=cosine")
  later = tmp_path / "later"
  train_cli(later, "--config.schedule.name=constant", "--config.schedule.budgets=(30,)",
            "--config.checkpoint.every=7", "--config.checkpoint.keep=5")
  out = cli("wsdjax.branch", "--workdir", str(later), "--from-step", "21", "--decay-steps",
            "3", "--decay-shape", "cosine")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "decay-24: decayed from main@21" in out.stdout
  assert_same_state(ckpt.restore(str(planned), branch="decay-24"),
                    ckpt.restore(str(later), branch="decay-24"))
  entry = manifest(later)[("decay-24", 24)]
  assert entry["extra"] and entry["parent"] == "main" and entry["fork_step"] == 21
  assert entry["eval_loss"] == pytest.approx(manifest(planned)[("decay-24", 24)]["eval_loss"])
  # Not a saved main step: a one-line error naming the nearest saved ones; nothing changes.
  before = sorted(p.name for p in (later / "checkpoints").iterdir())
  bad = cli("wsdjax.branch", "--workdir", str(later), "--from-step", "20")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      "wsdjax: --from_step: main has no saved state at step 20; use a saved main step, "
      "e.g. 14, 21, 28"]
  assert sorted(p.name for p in (later / "checkpoints").iterdir()) == before
  again = cli("wsdjax.branch", "--workdir", str(later), "--from-step", "21", "--decay-steps",
              "3")
  assert again.returncode == 2 and "already exists" in again.stderr


def test_a_branch_stopped_by_sigterm_resumes_to_the_same_bits(tmp_path):
  """`wsdjax.branch` as sturdy as training: SIGTERM saves and exits 0, the same command
  resumes and ends bitwise equal to an uninterrupted branch, a third run returns at once,
  and the branch's intermediate saves are pruned."""
  later = tmp_path / "later"
  train_cli(later, "--config.schedule.name=constant", "--config.schedule.budgets=(24,)",
            "--config.checkpoint.every=7")
  twin = tmp_path / "twin"
  shutil.copytree(later, twin)
  args = ["--from-step", "21", "--decay-steps", "6"]
  out = cli("wsdjax.branch", "--workdir", str(later), *args,
            env=subprocess_env(1) | {"WSDJAX_FAULTS": "term_after_step@decay-27:23"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert "stopped at decay-27@23; the same command resumes" in out.stdout + out.stderr
  again = cli("wsdjax.branch", "--workdir", str(later), *args)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resumed at 23" in again.stdout and "decay-27: decayed from main@21" in again.stdout
  whole = cli("wsdjax.branch", "--workdir", str(twin), *args)
  assert whole.returncode == 0, whole.stderr[-2000:]
  assert_same_state(ckpt.restore(str(later), branch="decay-27"),
                    ckpt.restore(str(twin), branch="decay-27"))
  with ckpt.CheckpointTree(later, read_only=True) as tree:
    assert tree.steps("decay-27") == [27]  # decay-27@23 pruned once the branch was done
  done = cli("wsdjax.branch", "--workdir", str(later), *args)
  assert done.returncode == 0 and "decay-27: decayed from main@21" in done.stdout
  assert "segment" not in done.stdout  # nothing ran


def test_a_live_request_without_a_running_job_is_refused_unless_queued(tiny_config, tmp_path):
  (tmp_path / config_lib.RUN_CONFIG).write_text(config_lib.to_json(tiny_config))
  out = cli("wsdjax.branch", "--workdir", str(tmp_path), "--now")
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
      f"wsdjax: --now: no job is running in {tmp_path} (nobody holds its writer lock); start "
      "it with python -m wsdjax.train, decay a saved step with --from-step N, or pass --queue "
      "to leave the request for the next run"]
  assert not (tmp_path / "requests").exists()
  queued = cli("wsdjax.branch", "--workdir", str(tmp_path), "--now", "--queue")
  assert queued.returncode == 0 and len(list((tmp_path / "requests").glob("*.json"))) == 1
  from wsdjax.training import live_requests as live_branch
  request = live_branch.pending(tmp_path)[0]
  assert live_branch.withdraw(tmp_path, request.id)  # what a timed-out --wait does
  assert live_branch.pending(tmp_path) == []


def test_two_queued_requests_for_one_fork_make_one_branch(tmp_path):
  train_cli(tmp_path, "--config.schedule.name=constant", "--config.schedule.budgets=(8,)")
  for _ in range(2):
    out = cli("wsdjax.branch", "--workdir", str(tmp_path), "--now", "--queue",
              "--decay-steps", "2")
    assert out.returncode == 0, out.stderr[-2000:]
  log = train_cli(tmp_path, "--config.schedule.name=constant", "--config.schedule.budgets=(8,16)")
  assert log.count("live request: forking decay-11 from main@9") == 1
  assert "refused: branch decay-11 already exists" in log
  done = sorted((tmp_path / "requests" / "done").glob("*.json"))
  errors = [json.loads(p.read_text()).get("error") for p in done]
  assert len(done) == 2 and sum(e is None for e in errors) == 1


def test_branch_cli_bad_arguments(tmp_path):
  for args, field in [(["--now", "--from-step", "3"], "--from_step/--now"),
                      (["--from-step", "3", "--decay-steps", "0"], "--decay_steps"),
                      (["--from-step", "3", "--decay-shape", "zigzag"], "--decay_shape"),
                      (["--from-step", "3", "--min-lr-ratio", "2"], "--min_lr_ratio"),
                      (["--from-step", "3"], "workdir")]:
    out = cli("wsdjax.branch", "--workdir", str(tmp_path), *args)
    assert out.returncode == 2, (args, out.stderr)
    assert out.stderr.startswith(f"wsdjax: {field}"), (args, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1


def test_live_branch_request_forks_the_running_job(tmp_path):
  workdir, log_path = tmp_path / "live", tmp_path / "job.log"
  with open(log_path, "w") as log:  # a file, not a pipe: an unread pipe would block the job
    job = subprocess.Popen(
        [sys.executable, "-m", "wsdjax.train", "--config", "configs/tiny.py", "--workdir",
         str(workdir), "--config.schedule.name=constant", "--config.schedule.budgets=(100000,)",
         "--config.train.log_every=1", "--config.checkpoint.every=1000"],
        cwd=REPO, env=subprocess_env(1), stdout=log, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 240
    while log_path.read_text().count("main step") < 20:  # wait until past the warmup
      assert job.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
      time.sleep(0.2)
    req = cli("wsdjax.branch", "--workdir", str(workdir), "--now", "--decay-steps", "6",
              "--wait", "--timeout", "120")
    assert req.returncode == 0, req.stderr
    job.send_signal(signal.SIGTERM)  # then stop: saves main where it is and exits 0
    job.wait(timeout=300)
  finally:
    job.kill()
  rest = log_path.read_text()
  assert job.returncode == 0, rest[-3000:]
  m = manifest(workdir)
  live = [e for e in m.values() if e.get("extra") and e["decayed"]]
  assert len(live) == 1
  branch = live[0]
  fork = branch["fork_step"]
  assert branch["branch"] == f"decay-{fork + 6}" and 0 < fork < 100000
  assert m[("main", fork)]["fork_point"]  # main saved where it forked
  stopped = max(s for b, s in m if b == "main")
  assert stopped > fork  # main went on after the branch, and SIGTERM saved it
  assert "live request: forking" in rest
  assert not list((workdir / "requests").glob("*.json"))  # request moved to done/


def test_extending_budgets_adds_branches_and_history_changes_are_refused(tiny_config,
                                                                          tmp_path):
  cfg = tiny_config
  cfg.schedule.budgets = (20,)
  train(cfg, tmp_path)
  first = ckpt.restore(str(tmp_path), branch="decay-20")
  cfg.schedule.budgets = (20, 40)
  rows = train(cfg, tmp_path)
  assert [r["branch"] for r in rows] == ["decay-20", "decay-42"]
  assert_same_state(first, ckpt.restore(str(tmp_path), branch="decay-20"))
  for field, value in [("schedule.budgets", (30,)), ("model.d_model", 32),
                       ("schedule.decay_fraction", 0.5)]:
    bad = cfg.copy_and_resolve_references()
    section, name = field.split(".")
    bad[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
      train(bad, tmp_path)


def test_live_request_inside_warmup_is_refused_and_main_goes_on(tiny_config, tmp_path):
  cfg = tiny_config
  cfg.schedule.update(name="constant", budgets=(12,), warmup_steps=5)
  from wsdjax.training import live_requests as live_branch
  request = live_branch.submit(str(tmp_path), decay_steps=3)  # seen at step 1: in warmup
  train(cfg, tmp_path)
  answer = live_branch._read(tmp_path / "requests" / "done" / f"{request.id}.json")
  assert answer.fork_step == 1 and "warmup" in answer.error
  assert not any(b.startswith("decay-") for b, _ in manifest(tmp_path))
  assert ("main", 12) in manifest(tmp_path)


def test_decay_overrides_apply_to_the_decays_only_and_are_recorded(tiny_config, tmp_path):
  """A cooldown recipe (here Adam's b2 0.999 in the decays): main is bitwise the same as
  without it, the decayed checkpoint differs, and its manifest entry records the recipe."""
  cfg = tiny_config
  cfg.schedule.update(name="wsd", budgets=(20,))
  plain = train(cfg, tmp_path / "plain")
  recipe = cfg.copy_and_resolve_references()
  recipe.schedule.decay_overrides.b2 = 0.999
  with_recipe = train(recipe, tmp_path / "recipe")
  entry = manifest(tmp_path / "recipe")[("decay-20", 20)]
  assert entry["decay_overrides"] == {"b2": 0.999}
  assert "decay_overrides" not in manifest(tmp_path / "plain")[("decay-20", 20)]
  fork = entry["fork_step"]
  assert_same_state(ckpt.restore(str(tmp_path / "plain"), "main", fork),
                    ckpt.restore(str(tmp_path / "recipe"), "main", fork))
  a = ckpt.restore(str(tmp_path / "plain"), "decay-20").params
  b = ckpt.restore(str(tmp_path / "recipe"), "decay-20").params
  assert any(not np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
  assert plain[0]["eval_loss"] != with_recipe[0]["eval_loss"]
