"""Input files of `python -m wsdjax.prepare` as streams of documents (str).

`list_inputs` expands `--input` (a file, a folder, or a glob with `**`; local or gs://...)
into `InputFile`s; `file_format` resolves `--format` for one file; `iter_documents`
streams one file's documents, never reading a whole file into memory:

  text     blocks between runs of blank (empty or whitespace-only) lines, stripped:
           the same documents as `sources.split_documents(sources.read_text(path))`
           (UTF-8, undecodable bytes -> U+FFFD, "\\r\\n" -> "\\n").
  jsonl    one JSON object per line; the document is its `text_field` (null skipped).
  parquet  the `text_field` string column, batch by batch (null skipped).

Text and JSONL files may be compressed (.gz, .zst/.zstd, .bz2, .lz4; decoded by pyarrow's
codecs). Empty or whitespace-only documents are skipped in every format. Every problem
with an input (no match, bad JSON, missing field, corrupt or unreadable file) is a
one-line `DataConfigError`, also when it is found mid-iteration.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import contextlib
import dataclasses
import glob
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from wsdjax.data.errors import DataConfigError

FORMATS = ("auto", "text", "jsonl", "parquet")
# Compression suffix -> pyarrow codec name.
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".lz4": "lz4"}
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_PARQUET_SUFFIXES = (".parquet", ".pq")
# Decompressed bytes read at a time (text, jsonl); rows per Parquet batch.
_BLOCK_BYTES = 1 << 22
_PARQUET_BATCH_ROWS = 1024
# Threads that stat remote files while listing them.
_STAT_THREADS = 32
# Errors of opening, reading or decompressing a file.
_READ_ERRORS = (OSError, EOFError, pa.ArrowException)
_GLOB_CHARS = re.compile(r"[*?[]")
# One or more blank lines (a text document ends at the first '\n' of it).
_SEPARATOR = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")
_BLANKS = re.compile(r"[ \t\r\f\v]*")


@dataclasses.dataclass(frozen=True)
class InputFile:
  """One input file."""
  path: str  # local absolute path, or a URL such as gs://bucket/x.jsonl.zst
  size: int  # bytes on storage


# ---------------------------------------------------------------------------- listing


def list_inputs(pattern: str) -> list[InputFile]:
  """Files matching `pattern`: a file, a folder (recursively), or a glob (`**`: any depth).

  Local or remote (anything with '://', through etils.epath). Sorted by path; hidden
  files and folders (name starting with '.') under a folder or glob are skipped; a file
  named outright is kept.
  """
  files = _list_remote(pattern) if _is_remote(pattern) else _list_local(pattern)
  if not files:
    raise DataConfigError(f"--input: no file matches {pattern!r}; give an existing file, folder or glob")
  return sorted(files, key=lambda f: f.path)


def _is_remote(path: str) -> bool:
  return "://" in path


def _list_local(pattern: str) -> list[InputFile]:
  """Local files matching `pattern`, with their sizes."""
  pattern = os.path.abspath(os.path.expanduser(pattern))
  if os.path.isfile(pattern):
    return [InputFile(pattern, os.path.getsize(pattern))]
  if os.path.isdir(pattern):
    base, matches = pattern, glob.glob(os.path.join(glob.escape(pattern), "**", "*"), recursive=True)
  else:
    base, _ = _split_glob(pattern)
    matches = glob.glob(pattern, recursive=True)
  return [InputFile(p, os.path.getsize(p)) for p in matches
          if os.path.isfile(p) and not _is_hidden(p, base)]


def _list_remote(pattern: str) -> list[InputFile]:
  """Remote files matching `pattern`, with their sizes (stat'ed in parallel)."""
  base, rest = _split_glob(pattern)
  if not rest:
    path = epath.Path(pattern)
    if path.is_dir():
      base, paths = pattern.rstrip("/"), _walk_remote(pattern.rstrip("/"), None)
    else:
      return [InputFile(pattern, path.stat().length)] if path.exists() else []
  elif "**" in rest:  # epath's glob refuses '**': walk and match instead
    paths = _walk_remote(base, _glob_regex(rest))
  else:
    paths = [str(p) for p in epath.Path(base).glob(rest)]
  paths = [p for p in paths if not _is_hidden(p, base)]
  with concurrent.futures.ThreadPoolExecutor(_STAT_THREADS) as pool:
    stats = list(pool.map(lambda p: epath.Path(p).stat(), paths))
  return [InputFile(p, s.length) for p, s in zip(paths, stats) if not s.is_directory]


def _split_glob(pattern: str) -> tuple[str, str]:
  """(the folder before the first wildcard component, the rest); rest '' if no wildcard."""
  scheme, sep, path = pattern.rpartition("://")
  parts = path.split("/")
  first = next((i for i, p in enumerate(parts) if _GLOB_CHARS.search(p)), None)
  if first is None:
    return pattern, ""
  return scheme + sep + "/".join(parts[:first]), "/".join(parts[first:])


def _walk_remote(top: str, regex: re.Pattern | None) -> list[str]:
  """Files under the remote folder `top` whose path below it fullmatches `regex` (or all)."""
  bare_top = top.partition("://")[2]
  paths = []
  for root, _, names in epath.Path(top).walk():
    root = str(root).rstrip("/")
    # tf.io.gfile gives roots with the scheme, fsspec without it.
    below = root[len(top):] if root.startswith(top) else root[len(bare_top):]
    below = below.strip("/")
    for name in names:
      rel = f"{below}/{name}" if below else name
      if regex is None or regex.fullmatch(rel):
        paths.append(f"{top}/{rel}")
  return paths


def _glob_regex(pattern: str) -> re.Pattern:
  """A regex for paths (with '/') matching the glob `pattern`; '**' is any number of folders."""
  parts = pattern.split("/")
  out = []
  for i, part in enumerate(parts):
    last = i == len(parts) - 1
    if part == "**":
      out.append(".*" if last else "(?:.*/)?")
    else:
      out.append(_component_regex(part) + ("" if last else "/"))
  return re.compile("".join(out), re.DOTALL)


def _component_regex(part: str) -> str:
  """A regex for one path component matching the glob component `part`."""
  out, i = [], 0
  while i < len(part):
    c = part[i]
    end = part.find("]", i + 2) if c == "[" else -1
    if c == "*":
      out.append("[^/]*")
    elif c == "?":
      out.append("[^/]")
    elif end > 0:
      body = part[i + 1:end]
      body = "^" + body[1:] if body.startswith("!") else body
      out.append("[" + body.replace("\\", "\\\\") + "]")
      i = end
    else:
      out.append(re.escape(c))
    i += 1
  return "".join(out)


def _is_hidden(path: str, base: str) -> bool:
  """Whether a file or folder of `path` below `base` has a name starting with '.'."""
  below = path[len(base):] if path.startswith(base) else os.path.basename(path)
  return any(p.startswith(".") for p in below.split("/"))


# ---------------------------------------------------------------------------- formats


def compression_of(path: str) -> str | None:
  """The pyarrow codec of `path` by its suffix (.gz .zst .zstd .bz2 .lz4); None if plain."""
  return COMPRESSIONS.get(_suffix(path))


def file_format(path: str, fmt: str) -> str:
  """'text', 'jsonl' or 'parquet' for `path`: `fmt`, or if 'auto', by its extension.

  The extension is read after dropping a compression suffix: .jsonl/.json/.ndjson ->
  jsonl, .parquet/.pq -> parquet, anything else -> text.
  """
  if fmt not in FORMATS:
    raise DataConfigError(f"--format: is {fmt!r}; must be one of {', '.join(FORMATS)}")
  if fmt == "auto":
    name = _basename(path)
    if compression_of(path):
      name = name[:-len(_suffix(path))]
    suffix = _suffix(name)
    fmt = "jsonl" if suffix in _JSONL_SUFFIXES else "parquet" if suffix in _PARQUET_SUFFIXES else "text"
  if fmt == "parquet":
    _check_uncompressed_parquet(path)
  return fmt


def _basename(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[-1]


def _suffix(path: str) -> str:
  """The last extension of `path`'s name, lower case ('' if none)."""
  return os.path.splitext(_basename(path))[1].lower()


def _check_uncompressed_parquet(path: str) -> None:
  codec = compression_of(path)
  if codec:
    raise DataConfigError(f"--input: {path} is a Parquet file inside {codec} compression; decompress "
                          "it (Parquet compresses inside the file) or pass the right --format")


# ---------------------------------------------------------------------------- reading


def iter_documents(path: str, fmt: str, text_field: str = "text",
                   on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
  """The non-blank documents of one input file, in file order.

  Args:
    path: a local path or a URL (gs://...).
    fmt: a resolved format, 'text', 'jsonl' or 'parquet' (see `file_format`).
    text_field: the JSON field or Parquet column holding the text.
    on_bytes: if given, called now and then with the number of on-storage bytes
      (compressed bytes of a compressed file) consumed since its last call; the calls
      add up to the file's size by the end.
  """
  if fmt == "text":
    return _split_stream(_normalized(_decoded(_blocks(path, on_bytes))))
  if fmt == "jsonl":
    return _jsonl_documents(path, _decoded(_blocks(path, on_bytes)), text_field)
  if fmt == "parquet":
    _check_uncompressed_parquet(path)
    return _parquet_documents(path, text_field, on_bytes)
  raise DataConfigError(f"--format: is {fmt!r}; must be one of text, jsonl, parquet (resolve "
                        "'auto' with file_format)")


@contextlib.contextmanager
def _reading(path: str):
  """Turns an error of opening, reading or decompressing `path` into a DataConfigError."""
  try:
    yield
  except _READ_ERRORS as e:
    msg = " ".join(str(e).split())
    raise DataConfigError(f"--input: cannot read {path} ({type(e).__name__}: {msg}); fix or "
                          "remove that file") from None


def _open(path: str):
  """`path` opened for reading bytes: local with open(), remote with etils.epath."""
  return epath.Path(path).open("rb") if _is_remote(path) else open(path, "rb")


def _blocks(path: str, on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
  """The (decompressed) bytes of `path` in blocks; reports raw bytes read to `on_bytes`."""
  codec = compression_of(path)
  with _reading(path):
    raw = _open(path)
  with raw:
    with _reading(path):
      stream = pa.CompressedInputStream(raw, codec) if codec else raw
    reported = 0
    while True:
      with _reading(path):
        block = stream.read(_BLOCK_BYTES)
        position = raw.tell() if on_bytes else 0
      if on_bytes and position > reported:
        on_bytes(position - reported)
        reported = position
      if not block:
        return
      yield block


def _decoded(blocks: Iterable[bytes]) -> Iterator[str]:
  """UTF-8 text of a stream of byte blocks; undecodable bytes become U+FFFD."""
  decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
  for block in blocks:
    yield decoder.decode(block)
  yield decoder.decode(b"", final=True)


def _normalized(pieces: Iterable[str]) -> Iterator[str]:
  """The pieces with "\\r\\n" -> "\\n", also where a "\\r\\n" spans two pieces."""
  held = ""
  for piece in pieces:
    piece = held + piece
    held = "\r" if piece.endswith("\r") else ""
    yield piece[:len(piece) - len(held)].replace("\r\n", "\n")
  yield held


def _split_stream(pieces: Iterable[str]) -> Iterator[str]:
  """The stripped non-empty blocks between blank lines of the text `pieces` make up.

  Equals `sources.split_documents("".join(pieces))`. Only the text since the last
  '\\n' is scanned again with the next piece, and only while it could begin a blank line.
  """
  parts, tail = [], ""
  for piece in pieces:
    text = tail + piece
    start = 0
    for m in _SEPARATOR.finditer(text):
      parts.append(text[start:m.start()])
      doc = "".join(parts).strip()
      if doc:
        yield doc
      parts, start = [], m.end()
    rest = text[start:]
    newline = rest.rfind("\n")
    if newline >= 0 and _BLANKS.fullmatch(rest, newline + 1):
      parts.append(rest[:newline])
      tail = rest[newline:]
    else:
      parts.append(rest)
      tail = ""
  doc = ("".join(parts) + tail).strip()
  if doc:
    yield doc


def _lines(pieces: Iterable[str]) -> Iterator[str]:
  """The lines (split on '\\n' only, without it) of the text `pieces` make up."""
  parts = []
  for piece in pieces:
    if "\n" not in piece:
      parts.append(piece)
      continue
    lines = piece.split("\n")
    parts.append(lines[0])
    yield "".join(parts)
    yield from lines[1:-1]
    parts = [lines[-1]]
  last = "".join(parts)
  if last:
    yield last


def _jsonl_documents(path: str, pieces: Iterable[str], field: str) -> Iterator[str]:
  """The `field` values of the JSON objects, one a line, of the text `pieces` make up."""
  for number, line in enumerate(_lines(pieces), 1):
    if number == 1:
      line = line.removeprefix("\ufeff")  # a UTF-8 byte order mark
    if not line or line.isspace():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataConfigError(f"--input: {path} line {number} is not JSON ({e.msg} at column "
                            f"{e.colno}); fix or remove that line") from None
    if not isinstance(record, dict) or field not in record:
      raise DataConfigError(_no_field_message(path, number, field, record))
    value = record[field]
    if isinstance(value, str):
      if value and not value.isspace():
        yield value
    elif value is not None:
      raise DataConfigError(
          f"--text_field: {path} line {number}: {field!r} is a JSON {_json_type(value)}, not "
          "text; pass --text_field=<the field that holds the text>")


def _no_field_message(path: str, number: int, field: str, record) -> str:
  head = f"--text_field: {path} line {number} has no field {field!r}"
  if not isinstance(record, dict):
    return f"{head} (it is a JSON {_json_type(record)}, not an object); make every line a JSON object"
  if not record:
    return f"{head} (it is an empty object); give every line the field or remove such lines"
  return f"{head} (its fields: {_names(list(record))}); pass --text_field=<one of them>"


def _json_type(value) -> str:
  if isinstance(value, bool):
    return "boolean"
  if isinstance(value, (int, float)):
    return "number"
  return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def _names(names: list[str], limit: int = 20) -> str:
  """`names` joined by ', ', cut after `limit` of them."""
  more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _parquet_documents(path: str, field: str, on_bytes: Callable[[int], None] | None) -> Iterator[str]:
  """The non-null values of the string column `field` of a Parquet file, batch by batch.

  `on_bytes` gets the file's size in shares proportional to the rows read.
  """
  with _reading(path):
    raw = _open(path)
  with raw:
    with _reading(path):
      raw.seek(0, os.SEEK_END)
      size = raw.tell()
      raw.seek(0)
    try:
      parquet = pq.ParquetFile(raw)
    except (pa.ArrowInvalid, OSError) as e:
      msg = " ".join(str(e).split())
      raise DataConfigError(f"--input: {path} is not a Parquet file ({msg}); give Parquet files "
                            "or pass --format=text or --format=jsonl") from None
    _check_text_column(path, parquet.schema_arrow, field)
    rows, done, reported = parquet.metadata.num_rows, 0, 0
    batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[field])
    while True:
      with _reading(path):
        batch = next(batches, None)
      if batch is None:
        break
      done += batch.num_rows
      if on_bytes and rows:
        share = size * done // rows
        on_bytes(share - reported)
        reported = share
      for doc in batch.column(0).to_pylist():
        if doc and not doc.isspace():
          yield doc
    if on_bytes and size > reported:
      on_bytes(size - reported)


def _check_text_column(path: str, schema: pa.Schema, field: str) -> None:
  """Raises unless `schema` has a string column `field`."""
  if field not in schema.names:
    raise DataConfigError(f"--text_field: {path} has no column {field!r} (columns: "
                          f"{_names(schema.names)}); pass --text_field=<one of them>")
  kind = schema.field(field).type
  values = kind.value_type if pa.types.is_dictionary(kind) else kind
  if not (pa.types.is_string(values) or pa.types.is_large_string(values)
          or pa.types.is_string_view(values)):
    raise DataConfigError(f"--text_field: {path} column {field!r} is {kind}, not text; pass "
                          "--text_field=<a string column>")
