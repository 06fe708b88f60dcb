"""Tokenizers: raw bytes, SentencePiece trained on the run's own text, or a HF tokenizer.json.

Every tokenizer offers `encode(str) -> list[int]`, `decode(list[int]) -> str`,
`vocab_size`, `eos_id` (the id packed between documents), `encode_batch(list[str])`
(a fast path for whole corpora), and `describe()` (what identifies it, for the data
fingerprint). `build_tokenizer` makes the one a config asks for and checks that the
model's vocabulary has the tokenizer's size.
"""

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable

import numpy as np
from etils import epath

from wsdjax.data.errors import DataConfigError

# SentencePiece trains on at most this much text (a few seconds; more barely helps).
SP_TRAIN_MAX_CHARS = 4_000_000
# Lines are cut to this many characters for SentencePiece (it skips overlong lines).
_SP_MAX_LINE_CHARS = 4096
# Token strings taken as end-of-sequence in a HF tokenizer.json, in order of preference.
HF_EOS_TOKENS = ("</s>", "<|endoftext|>", "<eos>", "<|eos|>", "[EOS]")


class BytesTokenizer:
  """UTF-8 bytes as tokens: vocab 256, nothing to train.

  Byte 0 (NUL) is the end-of-sequence id placed between documents, so NUL bytes are
  dropped from input text (they do not occur in ordinary text); `decode` drops id 0 too
  and replaces invalid UTF-8 sequences with U+FFFD. Text decoded from non-UTF-8 bytes with
  Python's surrogateescape (a command-line argument) encodes back to those raw bytes.
  """

  vocab_size = 256
  eos_id = 0
  kind = "bytes"

  def encode(self, text: str) -> list[int]:
    return list(self._bytes(text))

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [np.frombuffer(self._bytes(t), np.uint8) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

  def describe(self) -> dict:
    return {"kind": self.kind}

  def files(self) -> dict[str, bytes]:
    return {}

  @staticmethod
  def _bytes(text: str) -> bytes:
    # surrogateescape: text that came from bytes that are not UTF-8 (a command-line
    # argument) encodes back to those bytes, so a bytes run reads any bytes as they are.
    return text.encode("utf-8", errors="surrogateescape").replace(b"\x00", b"")


class SentencePieceTokenizer:
  """A SentencePiece model (serialized proto); EOS is the model's `</s>`."""

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, threads: int = -1):
    """`threads`: threads of `encode_batch` (-1: SentencePiece's choice, every core)."""
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto, num_threads=threads)
    self.model_proto = model_proto
    self._sha256 = hashlib.sha256(model_proto).hexdigest()
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise DataConfigError("data.tokenizer: the sentencepiece model has no </s> (eos) id; delete the cached "
                            "model under WORKDIR/tokenizer to retrain it")

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def describe(self) -> dict:
    return {"kind": self.kind, "sha256": self._sha256}

  def files(self) -> dict[str, bytes]:
    """What a token store keeps of it (its tokenizer/ folder)."""
    return {"sentencepiece.model": self.model_proto}


class HuggingFaceTokenizer:
  """A `tokenizers` tokenizer.json; EOS is its `eos_token` or the first of HF_EOS_TOKENS.

  The eos token is read from a `tokenizer_config.json` beside the file when there is one,
  else the first of HF_EOS_TOKENS in the vocabulary; no eos token is an error.
  """

  kind = "huggingface"

  def __init__(self, path: str, raw: bytes | None = None, config_raw: bytes | None = None,
               field: str = "data.tokenizer_path"):
    """From the file `path`, or from its bytes `raw` (and those of the tokenizer_config.json
    beside it, `config_raw`) where given; `field` names the setting in errors."""
    import tokenizers  # pylint: disable=g-import-not-at-top
    if raw is None:
      if not path or not os.path.isfile(path):
        raise DataConfigError(f"{field}: {path!r} is not a tokenizer.json file; "
                              "give the path of a Hugging Face tokenizer.json")
      with open(path, "rb") as f:
        raw = f.read()
      config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
      if os.path.isfile(config_path):
        with open(config_path, "rb") as f:
          config_raw = f.read()
    self.raw, self.config_raw = raw, config_raw
    self._sha256 = hashlib.sha256(raw).hexdigest()
    try:
      self._tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - the library raises a bare Exception
      raise DataConfigError(f"{field}: {path} is not a valid tokenizer.json "
                            f"({' '.join(str(e).split())}); give a Hugging Face "
                            "tokenizer.json file") from None
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    eos = _hf_eos_token(config_raw, self._tok)
    if eos is None:
      raise DataConfigError(
          f"{field}: {path} has none of the eos tokens {list(HF_EOS_TOKENS)}; "
          "add one of them to the tokenizer")
    self.eos_id = self._tok.token_to_id(eos)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def describe(self) -> dict:
    return {"kind": self.kind, "sha256": self._sha256}

  def files(self) -> dict[str, bytes]:
    """What a token store keeps of it (its tokenizer/ folder)."""
    return {"tokenizer.json": self.raw} | (
        {"tokenizer_config.json": self.config_raw} if self.config_raw else {})


def _hf_eos_token(config_raw: bytes | None, tok) -> str | None:
  """The eos token string: tokenizer_config.json's `eos_token`, else a known name."""
  candidates = list(HF_EOS_TOKENS)
  if config_raw:
    try:
      eos = json.loads(config_raw).get("eos_token")
    except (ValueError, AttributeError):
      eos = None
    if isinstance(eos, dict):
      eos = eos.get("content")
    if isinstance(eos, str):
      candidates.insert(0, eos)
  return next((t for t in candidates if tok.token_to_id(t) is not None), None)


def training_sample(docs: list[str], max_chars: int = SP_TRAIN_MAX_CHARS) -> list[str]:
  """Every k-th document, k chosen so the sample has about `max_chars` characters."""
  total = sum(len(d) for d in docs)
  stride = max(1, -(-total // max_chars))
  return list(docs[::stride])


def _sentences(texts: Iterable[str], max_chars: int) -> Iterable[str]:
  """Non-empty lines of `texts`, cut to _SP_MAX_LINE_CHARS, until `max_chars` in all."""
  used = 0
  for text in texts:
    for line in text.split("\n"):
      for start in range(0, len(line), _SP_MAX_LINE_CHARS):
        piece = line[start:start + _SP_MAX_LINE_CHARS].strip()
        if not piece:
          continue
        yield piece
        used += len(piece)
        if used >= max_chars:
          return


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str,
                        field: str = "model.vocab_size") -> bytes:
  """Trains a SentencePiece model in memory; returns its serialized proto.

  Ids: 0 = <unk>, 1 = </s> (eos), no bos or pad, so every one of the `vocab_size` ids is
  a piece the model can emit. Training is deterministic given the text (no sampling).
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  if model_type not in ("bpe", "unigram"):
    raise DataConfigError(f"data.sp_model_type: is {model_type!r}; must be 'bpe' or 'unigram'")
  out = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentences(texts, SP_TRAIN_MAX_CHARS)), model_writer=out,
        vocab_size=vocab_size, model_type=model_type, unk_id=0, eos_id=1, bos_id=-1,
        pad_id=-1, character_coverage=0.9995, max_sentence_length=4 * _SP_MAX_LINE_CHARS,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=2, minloglevel=2)
  except RuntimeError as e:
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise DataConfigError(
        f"{field}: sentencepiece could not train {vocab_size} pieces on the "
        f"training text ({msg}); use a smaller vocabulary or more text") from None
  return out.getvalue()


def load_or_train_sentencepiece(workdir: str | None, vocab_size: int, model_type: str,
                                texts: Callable[[], Iterable[str]]) -> SentencePieceTokenizer:
  """The model cached in `workdir/tokenizer/`, else one trained now (and cached).

  The file name holds the model type and vocabulary size. Training is deterministic, so
  processes that share a workdir may each train and write the same bytes; the write goes
  through a per-process temporary file and a rename. `workdir` may be local or any path
  `etils.epath` reads (gs://...). With no workdir nothing is cached.
  """
  path = _cached_model(workdir, vocab_size, model_type)
  if path and path.exists():
    return SentencePieceTokenizer(path.read_bytes())
  proto = train_sentencepiece(texts(), vocab_size, model_type)
  if path:
    _write_cached(path, proto)
  return SentencePieceTokenizer(proto)


def _cached_model(workdir: str | None, vocab_size: int, model_type: str) -> epath.Path | None:
  """Where a run keeps its SentencePiece model (the name holds the type and size)."""
  if not workdir:
    return None
  return epath.Path(workdir) / "tokenizer" / f"sentencepiece_{model_type}_{vocab_size}.model"


def _write_cached(path: epath.Path, proto: bytes) -> None:
  """Through a per-process temporary file and a rename: processes sharing a workdir may
  each write the same bytes."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
  tmp.write_bytes(proto)
  tmp.replace(path)


def build_tokenizer(config, workdir: str | None, train_texts: Callable[[], Iterable[str]]):
  """The tokenizer `config.data.tokenizer` names, checked against `config.model.vocab_size`.

  Args:
    config: the whole run config.
    workdir: the run's directory (SentencePiece cache), or None.
    train_texts: called only if a SentencePiece model must be trained; returns the
      training documents (callers keep them to a few MB, see `training_sample`).

  Raises:
    DataConfigError: unknown kind, or the model's vocab size differs from the tokenizer's.
  """
  kind = config.data.tokenizer
  vocab_size = config.model.vocab_size
  if kind == "bytes":
    tok = BytesTokenizer()
  elif kind == "sentencepiece":
    tok = load_or_train_sentencepiece(workdir, vocab_size, config.data.sp_model_type,
                                      train_texts)
  elif kind == "huggingface":
    tok = HuggingFaceTokenizer(config.data.tokenizer_path)
  else:
    raise DataConfigError(
        f"data.tokenizer: is {kind!r}; must be 'bytes', 'sentencepiece' or 'huggingface'")
  check_vocab_size(vocab_size, tok)
  return tok


def check_vocab_size(model_vocab_size: int, tok) -> None:
  """Raises DataConfigError unless the model's vocabulary is the tokenizer's."""
  if model_vocab_size != tok.vocab_size:
    raise DataConfigError(
        f"model.vocab_size: is {model_vocab_size} but the {tok.kind} tokenizer has "
        f"{tok.vocab_size} tokens; set --config.model.vocab_size={tok.vocab_size}")


def cache_sentencepiece(workdir: str | None, vocab_size: int, model_type: str,
                        model_proto: bytes, source: str) -> None:
  """Keep `model_proto` (a token store's model) in `workdir/tokenizer/` under the name a
  trained one would have, so eval, sample and export find the run's tokenizer; a different
  model already there is a DataConfigError (the run was trained with another one)."""
  path = _cached_model(workdir, vocab_size, model_type)
  if path is None:
    return
  if path.exists():
    if path.read_bytes() != model_proto:
      raise DataConfigError(
          f"data.path: the run's SentencePiece model {path} is not the one {source} was "
          "tokenized with; use the store the run was started on, or a new --workdir")
    return
  _write_cached(path, model_proto)


def store_tokenizer(config, workdir: str | None, store):
  """The tokenizer a token store was prepared with, checked against the config: the kind
  (`data.tokenizer`), a tokenizer.json's content (`data.tokenizer_path`), the
  SentencePiece model type, and `model.vocab_size` (DataConfigError otherwise)."""
  desc, kind = store.tokenizer, config.data.tokenizer
  if desc["kind"] != kind:
    raise DataConfigError(f"data.tokenizer: is {kind!r} but {store.path} was tokenized with "
                          f"{desc['kind']!r}; set --config.data.tokenizer={desc['kind']}")
  if kind == "bytes":
    tok = BytesTokenizer()
  elif kind == "huggingface":
    tok = HuggingFaceTokenizer(config.data.tokenizer_path)
    if tok.describe()["sha256"] != desc["sha256"]:
      raise DataConfigError(
          f"data.tokenizer_path: {config.data.tokenizer_path} is not the tokenizer.json "
          f"{store.path} was tokenized with (its copy: {store.path}/tokenizer/tokenizer.json); "
          "give that one")
  else:
    model_type = desc.get("model_type", config.data.sp_model_type)
    if model_type != config.data.sp_model_type:
      raise DataConfigError(f"data.sp_model_type: is {config.data.sp_model_type!r} but "
                            f"{store.path} was tokenized with a {model_type!r} model; set "
                            f"--config.data.sp_model_type={model_type}")
    tok = SentencePieceTokenizer(store.file_bytes("tokenizer/sentencepiece.model"))
  check_vocab_size(config.model.vocab_size, tok)
  if kind == "sentencepiece":
    cache_sentencepiece(workdir, tok.vocab_size, model_type, tok.model_proto, store.path)
  return tok
