"""Document sources: text files (plain, .gz, glob, blank-line documents), the split, KJV."""

import gzip
import random

import pytest

from wsdjax.data import DataConfigError
from wsdjax.data import kjv, sources


def test_split_documents_on_blank_lines():
  text = "first line\nsecond line\n\n  \n\nnext doc\r\n\t\nlast"
  assert sources.split_documents(text.replace("\r\n", "\n")) == [
      "first line\nsecond line", "next doc", "last"]
  assert sources.split_documents("one document\nno blank line\n") == [
      "one document\nno blank line"]
  assert sources.split_documents("\n\n  \n") == []


def test_text_files_plain_gz_glob_and_directory(tmp_path):
  (tmp_path / "a.txt").write_text("alpha one\n\nalpha two\n")
  with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
    f.write("beta one\r\n\r\nbeta two é\n")
  (tmp_path / "c.md").write_text("not matched")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "d.txt").write_text("delta")
  docs = sources.read_documents(str(tmp_path / "*.txt*"))
  assert docs == ["alpha one", "alpha two", "beta one", "beta two é"]
  assert sources.read_documents(str(tmp_path / "**" / "*.txt")) == [
      "alpha one", "alpha two", "delta"]
  assert sources.read_documents(str(tmp_path / "sub")) == ["delta"]
  assert sources.read_documents(str(tmp_path / "a.txt")) == ["alpha one", "alpha two"]
  with pytest.raises(DataConfigError, match=r"^data\.path: no file matches"):
    sources.read_documents(str(tmp_path / "*.nothing"))


def test_split_is_deterministic_and_order_free():
  docs = [f"document number {i} " * (i % 7 + 1) for i in range(2000)]
  train, val = sources.split_train_val(docs, 0.1)
  assert len(train) + len(val) == len(docs) and set(train).isdisjoint(val)
  assert 0.07 < len(val) / len(docs) < 0.13
  assert [d for d in docs if d in set(val)] == val  # input order kept
  shuffled = docs[:]
  random.Random(0).shuffle(shuffled)
  train2, val2 = sources.split_train_val(shuffled, 0.1)
  assert set(val2) == set(val) and set(train2) == set(train)
  # A tiny corpus still gets a non-empty validation and training side.
  train3, val3 = sources.split_train_val(["a", "b", "c"], 0.001)
  assert len(val3) == 1 and len(train3) == 2
  with pytest.raises(DataConfigError, match=r"^data\.val_fraction: is 0"):
    sources.split_train_val(docs, 0.0)


def test_bundled_kjv_documents():
  docs = kjv.kjv_documents()
  assert len(docs) > 5000
  assert docs[0].startswith("In the beginning God created the heaven and the earth.")
  assert docs[-1].endswith("be with you all. Amen.")
  assert max(len(d.encode()) for d in docs) < 4192  # SentencePiece skips longer lines
  text = "".join(docs)
  assert 3_500_000 < len(text) < 5_000_000
  assert not any(c in text for c in "[]0123456789\n")
  assert "public domain" in kjv.__doc__ and "MIT" in kjv.__doc__
