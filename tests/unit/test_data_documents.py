"""Input documents of `wsdjax.prepare`: listing, formats, streaming, compression, errors."""

import bz2
import gzip
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from wsdjax.data import DataConfigError
from wsdjax.data import documents, sources
from wsdjax.data.documents import InputFile, compression_of, file_format, iter_documents, list_inputs

DOCS = ["first document\nsecond line é", "  indented 文書 ", "third"]
TRICKY_TEXTS = {
    "crlf": b"one\r\ntwo\r\n\r\nthree\r\n",
    "space_tab_lines": b"a\n  \t \nb\n\t\nc\n \x0c\x0b\r\nd",
    "many_blank_lines": b"a\n\n\n\n \n\n\nb\n\n\n",
    "leading_trailing_blank": b"\n\n  \n  lead  \nmore\n\n\n  \n",
    "invalid_utf8": b"ok \xff\xfe bad\n\n\xe2\x82\n\ncut \xe2\x82",
    "no_final_newline": b"x\n\ny",
    "one_document": b"line one\nline two\n  line three  \n",
    "empty": b"",
    "only_blank": b"\n \n\t\r\n",
    "lone_cr_and_unicode_space": b"a\rb\n\r\nc\n\xc2\xa0\nd\n\xe2\x80\xa8\n\ne\r",
    "crcrlf": b"a\r\r\n\r\r\nb\r\r\r\n\nc",
}


def _write(path, data: bytes, codec=None):
  """Writes `data` to `path`, compressed with `codec` (None, gzip, bz2, zstd, lz4)."""
  if codec == "gzip":
    data = gzip.compress(data)
  elif codec == "bz2":
    data = bz2.compress(data)
  elif codec:
    with pa.CompressedOutputStream(str(path), codec) as f:
      f.write(data)
    return str(path)
  path.write_bytes(data)
  return str(path)


def _jsonl(records) -> bytes:
  return "".join(json.dumps(r) + "\n" for r in records).encode()


def _docs(path, fmt, **kwargs):
  return list(iter_documents(str(path), fmt, **kwargs))


# ---------------------------------------------------------------------------- text splitting


@pytest.mark.parametrize("name", sorted(TRICKY_TEXTS))
@pytest.mark.parametrize("block", [1, 2, 3, 7, 1 << 22])
def test_text_splits_like_sources(tmp_path, monkeypatch, name, block):
  monkeypatch.setattr(documents, "_BLOCK_BYTES", block)
  path = _write(tmp_path / "in.txt", TRICKY_TEXTS[name])
  expected = sources.split_documents(sources.read_text(path))
  assert _docs(path, "text") == expected


def test_text_split_matches_sources_on_random_texts(tmp_path, monkeypatch):
  rng = random.Random(0)
  pieces = [b"a", b"bc", b" ", b"\t", b"\r", b"\n", b"\n", b"\n\n", b"\r\n", b"\x0c",
            b"\xc3\xa9", b"\xc2\xa0", b"\xff", b"\xe2\x82", b"\xe2\x80\xa8"]
  path = tmp_path / "random.txt"
  for i in range(300):
    data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(40)))
    path.write_bytes(data)
    monkeypatch.setattr(documents, "_BLOCK_BYTES", rng.choice([1, 2, 3, 5, 64]))
    expected = sources.split_documents(sources.read_text(str(path)))
    assert _docs(path, "text") == expected, data


def test_text_long_document_and_long_line_stream(tmp_path, monkeypatch):
  monkeypatch.setattr(documents, "_BLOCK_BYTES", 1000)
  line = "word " * 5000
  data = (line + "\n" + line + "\n \n" + "x\n" * 3000 + "\n\nend").encode()
  path = _write(tmp_path / "long.txt", data)
  assert _docs(path, "text") == sources.split_documents(data.decode())
  assert len(_docs(path, "text")) == 3


# ---------------------------------------------------------------------------- formats


def _input_bytes(fmt: str) -> bytes:
  if fmt == "text":
    return ("\n\n".join(DOCS) + "\n").encode()
  return _jsonl([{"id": i, "text": d} for i, d in enumerate(DOCS)])


@pytest.mark.parametrize("codec,suffix", [(None, ""), ("gzip", ".gz"), ("zstd", ".zst"),
                                          ("bz2", ".bz2"), ("lz4", ".lz4")])
@pytest.mark.parametrize("fmt,ext", [("text", ".txt"), ("jsonl", ".jsonl")])
def test_text_and_jsonl_plain_and_compressed(tmp_path, fmt, ext, codec, suffix):
  path = _write(tmp_path / f"in{ext}{suffix}", _input_bytes(fmt), codec)
  assert compression_of(path) == codec
  assert file_format(path, "auto") == fmt
  expected = [d.strip() for d in DOCS] if fmt == "text" else DOCS
  assert _docs(path, fmt) == expected


def test_parquet_reads_the_text_column_batch_by_batch(tmp_path, monkeypatch):
  monkeypatch.setattr(documents, "_PARQUET_BATCH_ROWS", 2)
  texts = DOCS + [None, "", " \n", "last"]
  path = tmp_path / "in.parquet"
  pq.write_table(pa.table({"n": list(range(len(texts))), "text": texts}), path, row_group_size=3)
  assert file_format(str(path), "auto") == "parquet"
  assert _docs(path, "parquet") == DOCS + ["last"]
  big = tmp_path / "big.pq"
  pq.write_table(pa.table({"body": pa.array(DOCS, pa.large_string())}), big)
  assert _docs(big, "parquet", text_field="body") == DOCS
  dictionary = tmp_path / "dict.parquet"
  pq.write_table(pa.table({"text": pa.array(DOCS * 2).dictionary_encode()}), dictionary)
  assert _docs(dictionary, "parquet") == DOCS * 2


def test_jsonl_fields_nulls_blank_lines_bom_and_crlf(tmp_path):
  data = ("\ufeff" + json.dumps({"body": " keep spaces \n", "text": 1}) + "\r\n\r\n  \n"
          + json.dumps({"body": None}) + "\n" + json.dumps({"body": "  \t"}) + "\n"
          + json.dumps({"body": "é \u2028 x"}) + "\n" + json.dumps({"body": ""})).encode()
  path = _write(tmp_path / "in.jsonl", data)
  assert _docs(path, "jsonl", text_field="body") == [" keep spaces \n", "é \u2028 x"]


def test_jsonl_line_longer_than_a_block(tmp_path, monkeypatch):
  monkeypatch.setattr(documents, "_BLOCK_BYTES", 100)
  texts = ["x" * 1000, "y", "z" * 333]
  path = _write(tmp_path / "in.jsonl", _jsonl([{"text": t} for t in texts]))
  assert _docs(path, "jsonl") == texts


def test_iter_documents_stops_early_without_reading_on(tmp_path):
  path = _write(tmp_path / "in.txt", b"a\n\nb\n\nc")
  docs = iter_documents(path, "text")
  assert next(docs) == "a"
  docs.close()


# ---------------------------------------------------------------------------- file_format


@pytest.mark.parametrize("path,fmt", [
    ("a.txt", "text"), ("a", "text"), ("a.md.gz", "text"), ("/d/x.csv.zst", "text"),
    ("a.jsonl", "jsonl"), ("a.JSON", "jsonl"), ("a.ndjson.zstd", "jsonl"),
    ("gs://b/dir.v1/x.jsonl.bz2", "jsonl"), ("a.json.lz4", "jsonl"),
    ("a.parquet", "parquet"), ("gs://b/x.pq", "parquet"), ("a.parquet.txt", "text"),
])
def test_file_format_auto_by_extension(path, fmt):
  assert file_format(path, "auto") == fmt


def test_file_format_explicit_unknown_and_compressed_parquet():
  assert file_format("a.txt", "jsonl") == "jsonl"
  assert file_format("a.jsonl.gz", "text") == "text"
  assert file_format("a.bin", "parquet") == "parquet"
  with pytest.raises(DataConfigError, match=r"^--format: is 'csv'; must be one of auto, text"):
    file_format("a.csv", "csv")
  for path, fmt in [("x.parquet.gz", "auto"), ("x.pq.zst", "auto"), ("x.data.gz", "parquet")]:
    with pytest.raises(DataConfigError, match=r"^--input: x\.\w+\.\w+ is a Parquet file inside"):
      file_format(path, fmt)
  with pytest.raises(DataConfigError, match=r"^--format: is 'auto'"):
    iter_documents("a.txt", "auto")
  with pytest.raises(DataConfigError, match=r"^--input: x\.parquet\.gz is a Parquet file inside gzip"):
    iter_documents("x.parquet.gz", "parquet")


def test_compression_of():
  cases = {"a.gz": "gzip", "a.txt.GZ": "gzip", "a.zst": "zstd", "a.zstd": "zstd",
           "a.bz2": "bz2", "gs://b/a.jsonl.lz4": "lz4", "a.txt": None, "a": None,
           "a.gz.txt": None, "dir.gz/a": None}
  assert {p: compression_of(p) for p in cases} == cases


# ---------------------------------------------------------------------------- list_inputs


def _tree(tmp_path):
  for rel, data in [("a.txt", b"1"), ("b.jsonl", b"22"), ("sub/c.txt", b"333"),
                    ("sub/deep/d.txt", b"4444"), ("sub/.hidden.txt", b"5"),
                    (".git/e.txt", b"6"), ("sub/deep/e.jsonl", b"77")]:
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(data)
  return str(tmp_path)


def test_list_inputs_file_folder_glob(tmp_path):
  root = _tree(tmp_path)
  assert list_inputs(f"{root}/sub/c.txt") == [InputFile(f"{root}/sub/c.txt", 3)]
  assert list_inputs(f"{root}/sub/../a.txt") == [InputFile(f"{root}/a.txt", 1)]
  assert list_inputs(root) == [
      InputFile(f"{root}/{rel}", size) for rel, size in
      [("a.txt", 1), ("b.jsonl", 2), ("sub/c.txt", 3), ("sub/deep/d.txt", 4), ("sub/deep/e.jsonl", 2)]]
  assert [f.path for f in list_inputs(f"{root}/**/*.txt")] == [
      f"{root}/a.txt", f"{root}/sub/c.txt", f"{root}/sub/deep/d.txt"]
  assert [f.path for f in list_inputs(f"{root}/sub/*/*")] == [
      f"{root}/sub/deep/d.txt", f"{root}/sub/deep/e.jsonl"]
  assert [f.path for f in list_inputs(f"{root}/*.jsonl")] == [f"{root}/b.jsonl"]


def test_list_inputs_relative_and_home(tmp_path, monkeypatch):
  root = _tree(tmp_path)
  monkeypatch.chdir(root)
  assert list_inputs("sub/deep") == [InputFile(f"{root}/sub/deep/d.txt", 4),
                                     InputFile(f"{root}/sub/deep/e.jsonl", 2)]
  monkeypatch.setenv("HOME", root)
  assert list_inputs("~/a.txt") == [InputFile(f"{root}/a.txt", 1)]


def test_list_inputs_no_match(tmp_path):
  root = _tree(tmp_path)
  for pattern in [f"{root}/*.nothing", f"{root}/missing.txt", f"{root}/**/*.csv"]:
    with pytest.raises(DataConfigError) as e:
      list_inputs(pattern)
    assert str(e.value) == (f"--input: no file matches '{pattern}'; give an existing file, "
                            "folder or glob")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataConfigError, match=r"^--input: no file matches"):
    list_inputs(str(empty))


def test_remote_listing_and_reading_through_epath(tmp_path):
  """gs:// paths go through etils.epath (mocked onto tmp_path, fsspec-style walk roots)."""
  root = _tree(tmp_path)
  _write(tmp_path / "sub" / "f.txt.gz", b"remote one\n\nremote two", "gzip")
  local = lambda p: os.fspath(p).replace("gs://bkt", root)  # noqa: E731
  bare = lambda p: p.replace(root, "bkt")  # noqa: E731

  def walk(fn, top, **kwargs):
    for r, dirs, files in fn(local(top), **kwargs):
      yield bare(os.fspath(r)), dirs, files

  with epath_testing.mock_epath(
      glob=lambda fn, p: [p.replace(root, "gs://bkt") for p in fn(local(p))],
      walk=walk, isdir=lambda fn, p: fn(local(p)), exists=lambda fn, p: fn(local(p)),
      stat=lambda fn, p: fn(local(p)), open=lambda fn, p, *a, **k: fn(local(p), *a, **k)):
    assert epath.Path("gs://bkt/sub").is_dir()
    assert list_inputs("gs://bkt/sub/c.txt") == [InputFile("gs://bkt/sub/c.txt", 3)]
    assert [f.path for f in list_inputs("gs://bkt/sub")] == [
        "gs://bkt/sub/c.txt", "gs://bkt/sub/deep/d.txt", "gs://bkt/sub/deep/e.jsonl",
        "gs://bkt/sub/f.txt.gz"]
    assert list_inputs("gs://bkt/**/*.txt") == [
        InputFile("gs://bkt/a.txt", 1), InputFile("gs://bkt/sub/c.txt", 3),
        InputFile("gs://bkt/sub/deep/d.txt", 4)]
    assert [f.path for f in list_inputs("gs://bkt/*/d*/*")] == [
        "gs://bkt/sub/deep/d.txt", "gs://bkt/sub/deep/e.jsonl"]
    assert [f.path for f in list_inputs("gs://bkt/*.jsonl")] == ["gs://bkt/b.jsonl"]
    with pytest.raises(DataConfigError, match=r"^--input: no file matches 'gs://bkt/\*\*/\*\.csv'"):
      list_inputs("gs://bkt/**/*.csv")
    assert _docs("gs://bkt/sub/f.txt.gz", "text") == ["remote one", "remote two"]


# ---------------------------------------------------------------------------- errors


def _error(path, fmt, **kwargs) -> str:
  with pytest.raises(DataConfigError) as e:
    _docs(path, fmt, **kwargs)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_jsonl_errors_name_flag_path_and_line(tmp_path):
  ok = json.dumps({"text": "fine"}) + "\n\n"
  path = _write(tmp_path / "bad.jsonl", (ok + '{"text": "cut\n').encode())
  msg = _error(path, "jsonl")
  assert msg.startswith(f"--input: {path} line 3 is not JSON (")
  assert msg.endswith("; fix or remove that line")
  path = _write(tmp_path / "list.jsonl", (ok + '["text"]\n').encode())
  assert _error(path, "jsonl").startswith(
      f"--text_field: {path} line 3 has no field 'text' (it is a JSON array, not an object)")
  path = _write(tmp_path / "field.jsonl", (ok + '{"content": "x", "id": 3}\n').encode())
  assert _error(path, "jsonl") == (f"--text_field: {path} line 3 has no field 'text' (its fields: "
                                   "content, id); pass --text_field=<one of them>")
  path = _write(tmp_path / "type.jsonl", (ok + '{"text": ["x"]}\n').encode())
  assert _error(path, "jsonl").startswith(f"--text_field: {path} line 3: 'text' is a JSON array, not text;")
  path = _write(tmp_path / "num.jsonl.gz", b'{"body": 7}', "gzip")
  assert _error(path, "jsonl", text_field="body").startswith(
      f"--text_field: {path} line 1: 'body' is a JSON number, not text;")


def test_errors_come_after_the_documents_before_them(tmp_path):
  path = _write(tmp_path / "late.jsonl", _jsonl([{"text": "a"}, {"text": "b"}]) + b"nope\n")
  docs = iter_documents(path, "jsonl")
  assert [next(docs), next(docs)] == ["a", "b"]
  with pytest.raises(DataConfigError, match=rf"^--input: {path} line 3 is not JSON"):
    next(docs)


def test_parquet_errors(tmp_path):
  path = tmp_path / "t.parquet"
  pq.write_table(pa.table({"content": ["x"], "n": [1]}), path)
  assert _error(path, "parquet") == (f"--text_field: {path} has no column 'text' (columns: "
                                     "content, n); pass --text_field=<one of them>")
  assert _error(path, "parquet", text_field="n").startswith(
      f"--text_field: {path} column 'n' is int64, not text;")
  fake = _write(tmp_path / "fake.parquet", b"this is not parquet at all")
  assert _error(fake, "parquet").startswith(f"--input: {fake} is not a Parquet file (")


@pytest.mark.parametrize("codec,suffix", [("gzip", ".gz"), ("zstd", ".zst"), ("bz2", ".bz2"),
                                          ("lz4", ".lz4")])
@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_truncated_compressed_file_is_a_config_error(tmp_path, fmt, codec, suffix):
  full = tmp_path / f"full{suffix}"
  _write(full, _input_bytes(fmt) * 200, codec)
  data = full.read_bytes()
  path = _write(tmp_path / f"cut.{fmt}{suffix}", data[:len(data) // 2])
  msg = _error(path, fmt)
  assert msg.startswith(f"--input: cannot read {path} (")
  assert msg.endswith("); fix or remove that file")


def test_corrupt_and_missing_files_are_config_errors(tmp_path):
  path = _write(tmp_path / "garbage.txt.gz", b"not gzip data" * 10)
  assert _error(path, "text").startswith(f"--input: cannot read {path} (OSError: ")
  missing = str(tmp_path / "missing.jsonl")
  assert _error(missing, "jsonl").startswith(f"--input: cannot read {missing} (FileNotFoundError: ")
  assert _error(str(tmp_path / "missing.parquet"), "parquet").startswith("--input: cannot read ")


# ---------------------------------------------------------------------------- on_bytes


@pytest.mark.parametrize("codec,name", [(None, "big.txt"), ("gzip", "big.txt.gz"),
                                        ("zstd", "big.jsonl.zst")])
def test_on_bytes_adds_up_to_the_file_size(tmp_path, monkeypatch, codec, name):
  block = 1 << 16
  monkeypatch.setattr(documents, "_BLOCK_BYTES", block)
  rng = random.Random(1)
  texts = ["".join(rng.choice("abcdefgh ") for _ in range(500)) for _ in range(2000)]
  fmt = file_format(name, "auto")
  data = _jsonl({"text": t} for t in texts) if fmt == "jsonl" else "\n\n".join(texts).encode()
  path = _write(tmp_path / name, data, codec)
  size = os.path.getsize(path)
  assert size > 4 * block
  calls = []
  assert len(list(iter_documents(path, fmt, on_bytes=calls.append))) == len(texts)
  assert len(calls) > 3 and all(c > 0 for c in calls)
  assert calls[0] < size / 2
  assert size - block <= sum(calls) <= size


def test_on_bytes_of_parquet_is_the_file_size(tmp_path, monkeypatch):
  monkeypatch.setattr(documents, "_PARQUET_BATCH_ROWS", 10)
  path = tmp_path / "t.parquet"
  pq.write_table(pa.table({"text": [f"doc {i}" for i in range(100)]}), path)
  calls = []
  assert len(_docs(path, "parquet", on_bytes=calls.append)) == 100
  assert len(calls) >= 10 and sum(calls) == os.path.getsize(path)
  empty = tmp_path / "empty.parquet"
  pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
  calls = []
  assert _docs(empty, "parquet", on_bytes=calls.append) == []
  assert sum(calls) == os.path.getsize(empty)
