"""wsdjax.eval: on the run's validation set the loss of every decayed checkpoint is the
manifest's eval loss; data.* overrides evaluate another text; --json writes the records;
bad input is one line, exit 2, nothing written."""

import json
import math

import pytest

from conftest import run_cli as cli
from wsdjax.analysis import evaluation
from wsdjax.data import DataConfigError
from wsdjax.runtime.errors import ConfigError

TOKENS = 2 * 8 * 32  # train.eval_batches x global_batch_size x seq_len


@pytest.fixture
def run(byte_run):
  """A byte-level tiny WSD-S run on a small text corpus: decay-6 and decay-13 (shared)."""
  return byte_run


def manifest(run) -> list[dict]:
  return json.loads((run / "checkpoints" / "manifest.json").read_text())


def test_every_decayed_checkpoint_gets_the_manifests_eval_loss(run, tmp_path):
  out = cli("wsdjax.eval", "--workdir", str(run), "--json", str(tmp_path / "e.json"))
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith("data: the run's validation set, 2 batches x 8 rows x 32 tokens")
  records = json.loads((tmp_path / "e.json").read_text())
  decayed = {(e["branch"], e["step"]): e["eval_loss"] for e in manifest(run) if e["decayed"]}
  assert [(r["branch"], r["step"]) for r in records] == list(decayed) == [
      ("decay-6", 6), ("decay-13", 13)]
  for r, line in zip(records, lines[1:], strict=True):
    assert math.isclose(r["loss"], decayed[r["branch"], r["step"]], rel_tol=1e-5)
    assert r["manifest_eval_loss"] == decayed[r["branch"], r["step"]]
    assert r["tokens"] == TOKENS and r["data"] == "validation"
    assert math.isclose(r["perplexity"], math.exp(r["loss"]), rel_tol=1e-9)
    assert math.isclose(r["bits_per_byte"], r["loss"] / math.log(2), rel_tol=1e-9)  # bytes
    assert line.split() == [f"{r['branch']}@{r['step']}", "tokens", f"{TOKENS:,}", "loss",
                            f"{r['loss']:.4f}", "perplexity", f"{r['perplexity']:.3f}",
                            "bits/byte", f"{r['bits_per_byte']:.4f}"]


def test_overrides_evaluate_a_held_out_text_file(run, tmp_path):
  held_out = tmp_path / "held_out.txt"
  held_out.write_text("\n\n".join(f"Psalm {i}: The LORD is my shepherd; I shall not want."
                                  for i in range(40)))
  out = cli("wsdjax.eval", "--workdir", str(run), f"--config.data.path={held_out}",
            "--config.data.val_fraction=0.5", "--json", str(tmp_path / "h.json"))
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith(f"data: data.path='{held_out}', data.val_fraction=0.5: its "
                             "validation split, 2 batches x 8 rows x 32 tokens")
  assert [line.split()[0] for line in lines[1:]] == ["decay-6@6", "decay-13@13"]
  records = json.loads((tmp_path / "h.json").read_text())
  own = {(e["branch"], e["step"]): e["eval_loss"] for e in manifest(run)}
  for r in records:
    assert r["data"] == {"path": str(held_out), "val_fraction": 0.5}
    assert r["manifest_eval_loss"] is None and math.isfinite(r["loss"])
    assert abs(r["loss"] - own[r["branch"], r["step"]]) > 1e-3  # another text


def test_a_text_file_given_by_overrides_is_evaluated_whole(run, tmp_path):
  held_out = tmp_path / "held_out.txt"
  docs = [f"Psalm {i}: The LORD is my shepherd; I shall not want." for i in range(60)]
  held_out.write_text("\n\n".join(docs))
  (first,) = evaluation.evaluate_states(run, {"path": str(held_out)}, "decay-13", 13)
  # bytes: each document's bytes and an eos; rows of 33 tokens overlapping by one
  stream = sum(len(d.encode()) + 1 for d in docs)
  rows = (stream - 1) // 32
  assert first["tokens"] == rows // 8 * 8 * 32 and rows // 8 > 2  # more than the split's
  lines = []
  evaluation.evaluate_states(run, {"path": str(held_out)}, "decay-13", 13,
                             report=lines.append)
  assert lines == [f"the whole of {held_out}, {rows // 8} batches x 8 rows x 32 tokens"
                   + (f" ({rows % 8} rows past the last full batch left out)"
                      if rows % 8 else "")]
  with pytest.raises(ConfigError, match=r"^--config.data.path: .* fewer than one batch"):
    (tmp_path / "short.txt").write_text("In the beginning\n\nGod created")
    evaluation.evaluate_states(run, {"path": str(tmp_path / "short.txt")}, "decay-13", 13)


def test_one_state_by_branch_and_step(run):
  main = [e for e in manifest(run) if e["branch"] == "main"]
  (record,) = evaluation.evaluate_states(run, branch="main", step=main[0]["step"])
  assert (record["branch"], record["step"]) == ("main", main[0]["step"])
  assert evaluation.select_states(run, "decay-6", None) == [("decay-6", 6)]
  (shadow,) = evaluation.evaluate_states(run, branch="ema-0.9", step=13)  # decay-13's EMA
  assert math.isclose(shadow["loss"], shadow["manifest_eval_loss"], rel_tol=1e-5)
  assert shadow["manifest_eval_loss"] != record["manifest_eval_loss"]
  assert evaluation.select_states(run, None, main[-1]["step"]) == [("main", main[-1]["step"])]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"branch": "decay-7"}, ConfigError, r"^--branch: \S+ has no saved state of branch "
                                         r"'decay-7'; saved branches: decay-13, decay-6, ema-0.9, main$"),
    ({"branch": "decay-6", "step": 5}, ConfigError,
     r"^--step: decay-6 has no saved state at step 5; its saved steps: 6$"),
    ({"data_overrides": {"tokenizer": "sentencepiece"}}, ConfigError,
     r"^data.tokenizer: the overrides change the model's tokens \(bytes -> sentencepiece"),
    ({"data_overrides": {"source": "bigram"}}, ConfigError,
     r"^data.source: the overrides change the model's tokens"),
    ({"data_overrides": {"colour": "red"}}, ConfigError,
     r"^--config.data.colour: unknown data field; known: "),
    ({"data_overrides": {"path": "/no/such/file.txt"}}, DataConfigError,
     r"^data.path: no file matches '/no/such/file.txt'"),
])
def test_bad_requests_are_refused_before_any_work(run, kwargs, error, match):
  with pytest.raises(error, match=match):
    evaluation.evaluate_states(run, **kwargs)


@pytest.mark.parametrize("args, start", [
    (["--branch", "decay-7"], "wsdjax: --branch: "),
    (["--config.data.tokenizer=sentencepiece"], "wsdjax: data.tokenizer: the overrides "
                                                "change the model's tokens"),
    (["--config.data.colour=red"], "wsdjax: --config.data.colour: unknown config key 'colour' "
                                   "of data; known keys: bigram_alpha, "),
    (["--config.model.n_layers=3"], "wsdjax: --config.model.n_layers: eval takes only "
                                    "--config.data.<field>"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run, tmp_path, args, start):
  out = cli("wsdjax.eval", "--workdir", str(run), "--json", str(tmp_path / "x.json"), *args)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.startswith(start) and out.stderr.count("\n") == 1, out.stderr
  assert out.stdout == "" and not (tmp_path / "x.json").exists()
