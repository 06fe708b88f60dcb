"""Bad input gets one clear line before any work, and leaves the workdir as it was.

Every rule is checked twice over: the error names the field and says how to fix it
(`<field>: <problem>; <fix>`), and the files of an existing run (or the absence of a new
workdir) are unchanged afterwards. The CLI cases check the exit status 2, the single
stderr line `wsdjax: ...` and that `--debug` shows the traceback instead.
"""

import hashlib
import re

import pytest

from conftest import REPO, one_device_mesh, run_cli, subprocess_env
from wsdjax import config as config_lib
from wsdjax import data as data_lib
from wsdjax.training import trainer

LINE = re.compile(r"^(?P<field>[\w.\-]+): [^\n]+; [^\n]+$")


def snapshot(workdir) -> dict:
  """relative path -> content hash of every file under `workdir` (None if absent)."""
  if not workdir.exists():
    return None
  return {str(p.relative_to(workdir)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
  """A short finished tiny run; every bad input below is tried against it."""
  import tiny
  cfg = tiny.get_config()
  cfg.model.seq_len = 16
  cfg.train.global_batch_size = 8
  cfg.schedule.update(name="wsd", budgets=(8,), warmup_steps=2)
  cfg.checkpoint.async_save = False
  workdir = tmp_path_factory.mktemp("existing")
  trainer.train_and_evaluate(cfg, str(workdir), mesh=one_device_mesh())
  return cfg, workdir


def set_field(cfg, field, value):
  node = cfg
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


# (field to set, value, the field the error must name, a word of its message)
BAD_CONFIG = [
    ("model.n_layers", 0, "model.n_layers", "positive integer"),
    ("model.d_model", 30, "model.d_model", "not divisible"),
    ("model.n_kv_heads", 3, "model.n_kv_heads", "does not divide"),
    ("model.d_model", 36, "model.d_model", "odd"),
    ("model.seq_len", -4, "model.seq_len", "positive integer"),
    ("model.dtype", "float16", "model.dtype", "unknown value"),
    ("model.remat", "some", "model.remat", "unknown value"),
    ("model.n_heads", 2.5, "model.n_heads", "positive integer"),
    ("data.source", "web", "data.source", "unknown value"),
    ("data.tokenizer", "gpt2", "data.tokenizer", "unknown value"),
    ("data.val_fraction", 1.5, "data.val_fraction", "(0, 1)"),
    ("data.bigram_alpha", 0.0, "data.bigram_alpha", "> 0"),
    ("train.global_batch_size", 0, "train.global_batch_size", "positive integer"),
    ("train.micro_batches", 3, "train.micro_batches", "does not divide"),
    ("train.log_every", 0, "train.log_every", "positive integer"),
    ("train.eval_every", -1, "train.eval_every", "non-negative"),
    ("optimizer.b1", 1.0, "optimizer.b1", "[0, 1)"),
    ("optimizer.eps", 0.0, "optimizer.eps", "> 0"),
    ("optimizer.weight_decay", -0.1, "optimizer.weight_decay", ">= 0"),
    ("optimizer.grad_clip", -1.0, "optimizer.grad_clip", ">= 0"),
    ("schedule.name", "step", "schedule.name", "unknown value"),
    ("schedule.warmup_shape", "quadratic", "schedule.warmup_shape", "unknown value"),
    ("schedule.decay_shape", "square", "schedule.decay_shape", "unknown value"),
    ("schedule.budgets", (80, 40), "schedule.budgets", "strictly increasing"),
    ("schedule.budgets", (), "schedule.budgets", "non-empty"),
    ("schedule.budgets", (40, 40), "schedule.budgets", "strictly increasing"),
    ("schedule.peak_lr", 0.0, "schedule.peak_lr", "> 0"),
    ("schedule.min_lr_ratio", 1.5, "schedule.min_lr_ratio", "[0, 1]"),
    ("schedule.decay_fraction", 0.0, "schedule.decay_fraction", "(0, 1]"),
    ("schedule.rewarmup_steps", -1, "schedule.rewarmup_steps", "non-negative"),
    ("schedule.warmup_steps", 100, "schedule.warmup_steps", "warmup"),
    ("checkpoint.every", 0, "checkpoint.every", "positive integer"),
    ("checkpoint.keep", -1, "checkpoint.keep", "non-negative"),
    ("model.layer_loop", "vmap", "model.layer_loop", "unknown value"),
    ("model.attention_impl", "flash", "model.attention_impl", "unknown value"),
    ("model.loss_impl", "fused", "model.loss_impl", "unknown value"),
    ("model.swiglu_impl", "triton", "model.swiglu_impl", "unknown value"),
    ("checkpoint.compression", "lz4", "checkpoint.compression", "unknown value"),
    ("model.rope_theta", -1.0, "model.rope_theta", "positive finite"),
    ("model.init_std", 0.0, "model.init_std", "positive finite"),
    ("model.init_std", float("nan"), "model.init_std", "finite"),
    ("data.bigram_alpha", float("inf"), "data.bigram_alpha", "finite"),
    ("optimizer.weight_decay", float("inf"), "optimizer.weight_decay", "finite"),
    ("optimizer.eps", float("inf"), "optimizer.eps", "finite"),
    ("seed", 2**70, "seed", "[0, 2**31)"),
    ("seed", -1, "seed", "[0, 2**31)"),
    ("schedule.budgets", (True,), "schedule.budgets", "positive step counts"),
    ("mesh.rules", (("act_batch", "bogus"),), "mesh.rules", "names no mesh axis 'bogus'"),
    ("mesh.rules", (("act_batch",),), "mesh.rules", "not a (logical name, mesh axes) pair"),
    ("schedule.decay_overrides.b2", 1.5, "schedule.decay_overrides.b2", "[0, 1)"),
    ("schedule.decay_overrides.weight_decay", -1.0, "schedule.decay_overrides.weight_decay",
     ">= 0"),
    ("schedule.decay_overrides.grad_clip", 0.0, "schedule.decay_overrides.grad_clip",
     "switch it on or off"),
    ("schedule.decay_overrides.b2", "high", "schedule.decay_overrides.b2", "a number or None"),
    ("train.ema_decays", (1.0,), "train.ema_decays", "(0, 1)"),
    ("train.ema_decays", 0.999, "train.ema_decays", "a tuple"),
    ("train.ema_decays", (0.9, 0.9), "train.ema_decays", "repeats"),
    ("schedule.merge_window", -3, "schedule.merge_window", "does not fit"),
    ("mesh.tensor", 3, "mesh.data", "cannot fill"),
    ("mesh.fsdp", -1, "mesh.fsdp", "more than one axis"),
    ("mesh.data", 0, "mesh.data", "-1 or >= 1"),
    ("mesh.gather_weights", "never", "mesh.gather_weights", "unknown value"),
    ("train.chip_batch_size", -1, "train.chip_batch_size", "non-negative"),
]


def check_refused(cfg, workdir, field, word, error=config_lib.ConfigError):
  before = snapshot(workdir)
  with pytest.raises(error) as info:
    trainer.train_and_evaluate(cfg, str(workdir))
  message = str(info.value)
  match = LINE.match(message)
  assert match, f"not '<field>: <problem>; <fix>': {message!r}"
  assert match["field"] == field, message
  assert word in message, message
  assert snapshot(workdir) == before, f"the workdir changed after: {message}"


@pytest.mark.parametrize("field,value,named,word", BAD_CONFIG,
                         ids=[f"{f}={v!r}" for f, v, _, _ in BAD_CONFIG])
def test_bad_config_field_is_refused_before_any_write(existing_run, tmp_path, field, value,
                                                       named, word):
  cfg, _ = existing_run
  bad = cfg.copy_and_resolve_references()
  set_field(bad, field, value)
  check_refused(bad, tmp_path / "new-run", named, word)  # a fresh workdir stays absent


@pytest.mark.parametrize("field,value,named,word", [
    ("model.d_model", 128, "workdir", "model.d_model"),
    ("schedule.budgets", (16,), "workdir", "schedule.budgets"),
    ("data.bigram_seed", 7, "workdir", "data.bigram_seed"),
    ("seed", 1, "workdir", "seed"),
])
def test_workdir_of_another_run_is_refused_naming_the_fields(existing_run, field, value,
                                                              named, word):
  cfg, workdir = existing_run
  bad = cfg.copy_and_resolve_references()
  set_field(bad, field, value)
  check_refused(bad, workdir, named, word)


def test_cross_field_rules_on_eight_devices(existing_run, tmp_path):
  cfg, _ = existing_run
  cases = [({"train.global_batch_size": 12}, "train.global_batch_size", "data*fsdp = 8"),
           ({"train.global_batch_size": 16, "train.micro_batches": 4}, "train.micro_batches",
            "micro-batch"),
           ({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1}, "mesh", "4 but there are 8"),
           ({"train.global_batch_size": 16, "train.chip_batch_size": 3},
            "train.chip_batch_size", "do not divide"),
           ({"mesh.data": 1, "mesh.tensor": 8}, "model.n_heads", "mesh.tensor=8"),
           ({"schedule.name": "wsd_s", "schedule.decay_steps": 2}, "schedule.decay_steps",
            "only 'wsd'"),
           ({"schedule.merge_window": 9}, "schedule.merge_window", "first budget 8"),
           ({"schedule.name": "wsd_s", "schedule.merge_window": 4}, "schedule.merge_window",
            "'wsd_s' does not have"),
           ({"schedule.merge_window": 4, "schedule.merge_every": 4}, "schedule.merge_every",
            "fewer than two"),
           ({"schedule.merge_window": 4, "schedule.merge_weights": "mean"},
            "schedule.merge_weights", "unknown weights 'mean'")]
  for fields, named, word in cases:
    bad = cfg.copy_and_resolve_references()
    for f, v in fields.items():
      set_field(bad, f, v)
    check_refused(bad, tmp_path / "new-run", named, word)


def test_unknown_config_key_is_refused(existing_run, tmp_path):
  cfg, _ = existing_run
  bad = cfg.copy_and_resolve_references()
  bad.model.n_layer = 4  # a typo of n_layers
  check_refused(bad, tmp_path / "new-run", "model.n_layer", "did you mean model.n_layers")


@pytest.mark.parametrize("fields,named,word", [
    ({"data.source": "bundled", "model.vocab_size": 300}, "model.vocab_size", "256"),
    ({"data.source": "text", "data.path": "/nonexistent/*.txt"}, "data.path", "no file"),
    ({"data.source": "text", "data.path": ""}, "data.path", "empty"),
    ({"data.source": "tfds", "data.tfds_name": ""}, "data.tfds_name", "empty"),
    ({"data.source": "bundled", "data.tokenizer": "huggingface",
      "data.tokenizer_path": "/nonexistent/tokenizer.json"}, "data.tokenizer_path", "tokenizer"),
])
def test_bad_data_settings_leave_no_workdir(existing_run, tmp_path, fields, named, word):
  cfg, _ = existing_run
  bad = cfg.copy_and_resolve_references()
  for f, v in fields.items():
    set_field(bad, f, v)
  check_refused(bad, tmp_path / "new-run", named, word,
                error=(config_lib.ConfigError, data_lib.DataConfigError))


# ---- the CLI: exit 2, one line on stderr, no traceback unless --debug ----
@pytest.mark.parametrize("args,field", [
    (["--config.model.n_layers=0"], "model.n_layers"),
    (["--config.model.n_layerz=3"], "--config.model.n_layerz"),  # names the known keys
    (["--config.bogus.x=1"], "--config.bogus.x"),  # an unknown section: names the known ones
    (["--config.schedule.peak_lr=fast"], None),  # not a float
    (["--config.schedule.budgets=(8,4)"], "schedule.budgets"),
    (["--config.model.d_model=128"], "workdir"),  # a different run is in the workdir
    (["--config.train.ema_decays=(0.99,)"], "workdir"),  # EMA shadows change the state
    (["--config.train.ema_decays=(2,)"], "train.ema_decays"),
    (["--config.schedule.merge_window=4", "--config.schedule.name=cyclic_cosine"],
     "schedule.merge_window"),
])
def test_train_cli_one_line_errors(existing_run, args, field):
  _, workdir = existing_run
  before = snapshot(workdir)
  out = run_cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(workdir),
                "--config.model.seq_len=16", "--config.train.global_batch_size=8",
                "--config.schedule.name=wsd", "--config.schedule.budgets=(8,)",
                "--config.schedule.warmup_steps=2", *args)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("wsdjax: "), out.stderr[-2000:]
  if field:
    assert lines[0].startswith(f"wsdjax: {field}: ") and "; " in lines[0], lines[0]
  assert "Traceback" not in out.stderr + out.stdout
  assert snapshot(workdir) == before


def test_train_cli_missing_or_bad_arguments(tmp_path):
  for args, start in [([], "wsdjax: --config: missing"),
                      (["--config", "configs/tiny.py"], "wsdjax: --workdir: missing"),
                      (["--config", "configs/nope.py", "--workdir", str(tmp_path / "w")],
                       "wsdjax: "),
                      (["--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
                        "stray"], "wsdjax: arguments: unexpected")]:
    out = run_cli("wsdjax.train", *args)
    assert out.returncode == 2 and out.stderr.startswith(start), (args, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert not (tmp_path / "w").exists()


def test_train_cli_bad_workdir_config_file_and_sections(existing_run, tmp_path):
  """A --workdir that is a file, a config file returning no ConfigDict, a workdir whose
  config.json is not JSON, an unknown section: one line each, exit 2, nothing written."""
  (tmp_path / "a-file").write_text("x")
  (tmp_path / "dict_config.py").write_text("def get_config():\n  return {'model': {}}\n")
  (tmp_path / "torn").mkdir()
  (tmp_path / "torn" / "config.json").write_text('{"model": ')
  cases = [
      (["--config", "configs/tiny.py", "--workdir", str(tmp_path / "a-file")],
       "--workdir: ", "is a file, not a directory"),
      (["--config", str(tmp_path / "dict_config.py"), "--workdir", str(tmp_path / "w")],
       "--config: ", "returned a dict, not an ml_collections.ConfigDict"),
      (["--config", "configs/tiny.py", "--workdir", str(tmp_path / "torn")],
       "workdir: ", "config.json is not valid JSON"),
      (["--config", "configs/tiny.py", "--config.bogus.x=1", "--workdir", str(tmp_path / "w")],
       "--config.bogus.x: ", "unknown config section 'bogus'; known sections: checkpoint, data"),
  ]
  before = snapshot(tmp_path)
  for args, field, words in cases:
    out = run_cli("wsdjax.train", *args)
    assert out.returncode == 2, (args, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("wsdjax: " + field), out.stderr[-2000:]
    assert words in lines[0], lines[0]
  assert snapshot(tmp_path) == before


def _families(tmp_path, run_dir):
  """(command, args, the start of the one line) of every family of bad input the CLIs
  get: flags, config files, workdirs, data files, a broken tree, Ctrl-C at start-up."""
  files = tmp_path / "inputs"
  files.mkdir()
  for name, text in [("syntax.py", "def get_config(:\n"),
                     ("raises.py", "def get_config():\n  raise RuntimeError('boom')\n"),
                     ("exits.py", "import sys\ndef get_config():\n  sys.exit(4)\n"),
                     ("none.py", "def get_config():\n  return None\n"),
                     ("a-file", "x"), ("bad.txt.gz", "not gzip"), ("tok.json", "{not json"),
                     ("docs.txt", "one doc\n\nanother doc\n\na third\n")]:
    (files / name).write_text(text)
  new = str(tmp_path / "new-run")
  tiny = ["--config", "configs/tiny.py", "--workdir", new]
  return [
      ("wsdjax.train", tiny + ["--config.model.n_layers=abc"],
       "--config.model.n_layers: cannot use 'abc'"),
      ("wsdjax.train", tiny + ["--config.train.log_every=1.5"],
       "--config.train.log_every: cannot use '1.5'"),
      ("wsdjax.train", tiny + ["--bogus_flag=1"], "--bogus_flag: unknown flag; see --help"),
      ("wsdjax.train", tiny + ["--config.model.n_layers"],
       "--config.model.n_layers: missing its value; pass --config.model.n_layers=VALUE, e.g."),
      ("wsdjax.train", ["--config", str(files / "syntax.py"), "--workdir", new],
       "--config: cannot load it (SyntaxError"),
      ("wsdjax.train", ["--config", str(files / "raises.py"), "--workdir", new],
       "--config: cannot load it (RuntimeError: boom)"),
      ("wsdjax.train", ["--config", str(files / "exits.py"), "--workdir", new],
       "--config: loading it exited (sys.exit(4))"),
      ("wsdjax.train", ["--config", str(files / "none.py"), "--workdir", new],
       "--config: its get_config() returned None"),
      ("wsdjax.train", ["--config", "configs/tiny.py", "--workdir", str(files / "a-file" / "w")],
       f"--workdir: {files / 'a-file' / 'w'} cannot be created: {files / 'a-file'} is a file"),
      ("wsdjax.train", tiny + ["--config.data.source=text",
                               f"--config.data.path={files / 'bad.txt.gz'}"],
       f"data.path: cannot read {files / 'bad.txt.gz'} (BadGzipFile"),
      ("wsdjax.train", tiny + ["--config.data.source=text", f"--config.data.path={files}/docs.txt",
                               "--config.data.tokenizer=huggingface",
                               f"--config.data.tokenizer_path={files / 'tok.json'}"],
       f"data.tokenizer_path: {files / 'tok.json'} is not a valid tokenizer.json"),
      ("wsdjax.train", tiny + ["--num_processes=2"], "--coordinator_address: missing"),
      ("wsdjax.lr", ["--config", "configs/tiny.py", "--plot", str(files / "no" / "lr.png")],
       f"--plot: the folder {files / 'no'} does not exist"),
      ("wsdjax.branches", ["--workdir", str(run_dir("manifest-dir"))],
       "workdir: ") ,
      ("wsdjax.train", ["--config", "configs/tiny.py", "--workdir", str(run_dir("ckpt-file"))],
       "workdir: "),
  ]


def test_every_family_of_bad_input_is_one_line_exit_2_and_touches_nothing(existing_run,
                                                                          tmp_path):
  _, workdir = existing_run
  made = {}

  def run_dir(kind):  # a copy of the finished run, its tree broken in one way
    import shutil
    copy = tmp_path / kind
    shutil.copytree(workdir, copy)
    ckpts = copy / "checkpoints"
    if kind == "manifest-dir":
      (ckpts / "manifest.json").unlink()
      (ckpts / "manifest.json").mkdir()
    else:
      shutil.rmtree(ckpts)
      ckpts.write_text("")
    made[kind] = copy
    return copy

  cases = _families(tmp_path, run_dir)
  before = snapshot(tmp_path)
  for module, args, start in cases:
    out = run_cli(module, *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (args, out.returncode, out.stderr[-2000:])
    assert lines == [lines[0]] and lines[0].startswith("wsdjax: " + start), (args, lines)
    assert "; " in lines[0], lines[0]  # the problem, then how to fix it
  assert snapshot(tmp_path) == before  # nothing created, nothing changed
  assert "is a folder, not the manifest" in run_cli(
      "wsdjax.branches", "--workdir", str(made["manifest-dir"])).stderr


def test_ctrl_c_during_start_up_is_one_line_and_leaves_no_workdir(tmp_path):
  env = subprocess_env(1) | {"WSDJAX_FAULTS": "int_at_startup@main:0"}
  out = run_cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
                env=env)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
      "wsdjax: interrupted: Ctrl-C outside the training loop (a run stopped before its first "
      "step records nothing; saves made before are kept); rerun the command to go on"]
  assert not (tmp_path / "w").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
  out = run_cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
                "--config.model.n_layers=0", "--debug")
  assert out.returncode != 0 and "Traceback" in out.stderr
  assert "model.n_layers" in out.stderr
  assert not (tmp_path / "w").exists()


def test_branches_cli_on_a_missing_workdir(tmp_path):
  out = run_cli("wsdjax.branches", "--workdir", str(tmp_path / "none"))
  assert out.returncode == 2 and out.stderr.startswith("wsdjax: --workdir: "), out.stderr
  assert len(out.stderr.strip().splitlines()) == 1


def test_one_exit_code_table_for_every_cli():
  """errors.exit_code: bad input 2, a failed run 3 (a failed save, a non-finite loss; a save
  error before the checkpoint error it specialises), a stop 0, anything else a bug (None:
  traceback)."""
  from wsdjax import checkpoint, config, data
  from wsdjax.runtime import errors as cli
  from wsdjax.training import trainer
  assert cli.exit_code(config.ConfigError("f", "p", "x")) == cli.EXIT_BAD_INPUT
  assert cli.exit_code(data.DataConfigError("data.source: bad")) == cli.EXIT_BAD_INPUT
  assert cli.exit_code(checkpoint.CheckpointError("no state")) == cli.EXIT_BAD_INPUT
  assert cli.exit_code(checkpoint.SaveError("disk full")) == cli.EXIT_FAULT
  assert cli.exit_code(trainer.NonFiniteLoss("nan")) == cli.EXIT_FAULT
  assert cli.exit_code(cli.Stop("stopped")) == 0
  assert cli.exit_code(ValueError("a bug")) is None
  import re
  for front_door in ("train", "branch", "branches", "compare", "river_valley", "bench", "aot",
                     "merge", "fit"):
    with open(f"{REPO}/wsdjax/{front_door}.py") as f:  # each runs main with that table only
      assert re.search(r"cli\.run\((main|lambda argv: main\(argv, \*_flags\))\)\n",
                       f.read()), front_door
