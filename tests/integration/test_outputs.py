"""No command's output can destroy a run (wsdjax/runtime/outputs.py), as a user would try it.

Each case is the user's command line: its exit code, one line on stderr, and the run's
workdir byte for byte unchanged. Outputs never go into a run's tree; --overwrite replaces
only what the same command made; every output path is checked before the work, and a write
that fails is one line (exit 2 where the place cannot be written, 3 for a full disk); what a
killed writer left is cleaned by the next run; --help lists a command's own flags; a bad
config file says why; prompts that are not UTF-8 are a documented choice."""

import hashlib
import os
import subprocess

import pytest

from conftest import run_cli as cli
from wsdjax.analysis import sampling as sample
from wsdjax.runtime import outputs
from wsdjax.runtime.errors import ConfigError


def snapshot(folder) -> dict:
  """{relative path: sha256} of every file under `folder`."""
  out = {}
  for root, _, names in os.walk(folder):
    for n in names:
      full = os.path.join(root, n)
      with open(full, "rb") as f:
        out[os.path.relpath(full, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture
def run(byte_run):
  """A finished tiny run on a text file with the bytes tokenizer (shared: read only)."""
  return byte_run


def refused(out, code=2):
  """The one stderr line of a refused command (exit `code`)."""
  lines = out.stderr.strip().splitlines()
  assert out.returncode == code and len(lines) == 1, (out.returncode, out.stderr[-3000:])
  assert lines[0].startswith("wsdjax: ")
  return lines[0][len("wsdjax: "):]


def test_outputs_never_go_into_a_run(run, tmp_path):
  before = snapshot(run)
  export = ["--workdir", str(run), "--branch", "decay-6"]
  for out, where in ((run, run), (run / "checkpoints", run), (run / "x" / "y", run)):
    message = refused(cli("wsdjax.export", *export, "--out", str(out), "--overwrite"))
    assert message == (f"--out: {out} is inside the run {where}, whose files only the "
                       "commands that train it write; write it outside the run's folder")
  manifest = run / "checkpoints" / "manifest.json"
  message = refused(cli("wsdjax.eval", "--workdir", str(run), "--branch", "decay-6", "--json",
                        str(manifest)))
  assert message.startswith(f"--json: {manifest} is inside the run {run}")
  message = refused(cli("wsdjax.lr", "--config", "configs/tiny.py", "--plot",
                        str(run / "lr.png")))
  assert message.startswith(f"--plot: {run / 'lr.png'} is inside the run {run}")
  # A folder holding runs is not replaced either, even one an export once made.
  runs = tmp_path / "runs"
  os.makedirs(runs)
  (runs / "wsdjax_export.json").write_text("{}")
  os.symlink(run, runs / "link")  # a run below it (followed by the walk only as a link)
  os.makedirs(runs / "r" / "checkpoints")
  message = refused(cli("wsdjax.export", *export, "--out", str(runs), "--overwrite"))
  assert message == f"--out: {runs} holds the run {runs / 'r'}; pass a new or empty folder"
  assert snapshot(run) == before


def test_overwrite_replaces_only_an_earlier_export(run, tmp_path):
  out = tmp_path / "hf"
  first = cli("wsdjax.export", "--workdir", str(run), "--out", str(out))
  assert first.returncode == 0, first.stderr
  assert (out / "wsdjax_export.json").is_file()
  again = cli("wsdjax.export", "--workdir", str(run), "--branch", "decay-6", "--out", str(out),
              "--overwrite")
  assert again.returncode == 0, again.stderr
  assert '"branch": "decay-6"' in (out / "wsdjax_export.json").read_text()


def test_every_output_path_is_checked_before_the_work(run, tmp_path):
  before = snapshot(run)
  afile = tmp_path / "afile"
  afile.write_text("x")
  message = refused(cli("wsdjax.export", "--workdir", str(run), "--out", str(afile / "sub")))
  assert message.startswith(f"--out: {afile} is a file, not a folder")
  assert refused(cli("wsdjax.lr", "--config", "configs/tiny.py", "--plot",
                     "/proc/s.png")).startswith("--plot: cannot write /proc (")
  folder = tmp_path / "adir"
  folder.mkdir()
  message = refused(cli("wsdjax.eval", "--workdir", str(run), "--json", str(folder)))
  assert message == f"--json: {folder} is a folder; pass a file path"
  out = cli("wsdjax.aot", "--config", "configs/tiny.py", "--topology", "v5litepod-4",
            "--json", "/proc/x.json")
  assert refused(out).startswith("--json: cannot write /proc (") and out.stdout == ""
  assert snapshot(run) == before and os.listdir(folder) == []


def test_a_full_disk_is_one_line_exit_3(run, tmp_path):
  disk = tmp_path / "small"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    out = cli("wsdjax.export", "--workdir", str(run), "--out", str(disk / "hf"))
    message = refused(out, code=3)
    assert message.startswith(f"--out: {disk} has ") and "MiB free, the export needs" in message
    assert os.listdir(disk) == []
  finally:
    subprocess.run(["umount", str(disk)])


def test_what_a_killed_writer_left_is_cleaned_by_the_next_run(run, tmp_path):
  dead = 2**22 + 12345  # above the default pid_max: no such process
  out = tmp_path / "hf"
  left = tmp_path / f"hf.tmp-{dead}"
  os.makedirs(left)
  (left / "model.safetensors").write_text("half")
  assert cli("wsdjax.export", "--workdir", str(run), "--out", str(out)).returncode == 0
  assert not left.exists() and out.is_dir()
  stale = tmp_path / f".r.json.tmp-{dead}"
  stale.write_text("[")
  done = cli("wsdjax.eval", "--workdir", str(run), "--json", str(tmp_path / "r.json"))
  assert done.returncode == 0, done.stderr
  assert not stale.exists() and (tmp_path / "r.json").read_text().startswith("[")
  # Only a dead writer's: a live one (this process) keeps its file.
  mine = tmp_path / f".r.json.tmp-{os.getpid()}"
  mine.write_text("x")
  assert outputs.files.clean_stale_temps(tmp_path / "r.json") == [] and mine.exists()


def test_help_lists_the_commands_own_flags():
  for module, flag in (("wsdjax.lr", "--plot"), ("wsdjax.eval", "--json"),
                       ("wsdjax.train", "--workdir"), ("wsdjax.export", "--overwrite")):
    out = cli(module, "--help")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert f"\n  {flag}: " in out.stdout and len(out.stdout.splitlines()) < 40, module
    assert "  --config.data.prefetch" not in out.stdout  # not the whole config


def test_config_files_that_do_not_load_say_why(tmp_path):
  for body, kind in (("return [1, 2]", "a list"), ("return 3", "an int")):
    path = tmp_path / f"c{len(kind)}.py"
    path.write_text(f"def get_config():\n  {body}\n")
    message = refused(cli("wsdjax.train", "--config", str(path), "--workdir",
                          str(tmp_path / "w")))
    assert message.startswith(f"--config: get_config() returned {kind}, not an "
                              "ml_collections.ConfigDict")
  message = refused(cli("wsdjax.train", "--config", "configs/tiny.py:nosuch", "--workdir",
                        str(tmp_path / "w")))
  assert message.startswith("--config: cannot load configs/tiny.py:nosuch (TypeError: "
                            "get_config() takes 0 positional arguments but 1 was given)")
  assert not (tmp_path / "w").exists()


def test_a_prompt_that_is_not_utf8(run):
  """A bytes run takes the prompt's raw bytes; a run whose tokenizer reads text refuses it."""
  raw = cli("wsdjax.sample", "--workdir", run, "--prompt", b"ab\xff\xfe", "--tokens", "4",
            text=False)
  assert raw.returncode == 0, raw.stderr[-2000:]
  from wsdjax.data import tokenizers
  prompt = b"ab\xff\xfe".decode("utf-8", "surrogateescape")  # as Python hands argv over
  assert tokenizers.BytesTokenizer().encode(prompt) == [97, 98, 255, 254]

  class TextTokenizer:
    kind, eos_id = "sentencepiece", 1

    def encode(self, text):
      return list(text.encode("utf-8"))

  with pytest.raises(ConfigError, match=r"^--prompt: is not valid UTF-8 \(2 byte\(s\) are "
                                        r"not\), and the run's sentencepiece tokenizer"):
    sample.prompt_ids(TextTokenizer(), prompt, 256)


def test_prepare_and_bench_never_write_into_a_run(run):
  before = snapshot(run)
  message = refused(cli("wsdjax.prepare", "--input", "configs/tiny.py", "--output",
                        str(run / "store")))
  assert message == (f"--output: {run / 'store'} is inside the run {run}; prepare the store "
                     "outside any run's folder")
  message = refused(cli("wsdjax.bench", "--config", "configs/tiny.py", "--workdir", str(run)))
  assert message.startswith(f"--workdir: {run} is inside the run {run}, which the bench")
  assert snapshot(run) == before
