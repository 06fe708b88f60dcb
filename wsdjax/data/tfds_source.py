"""TFDS datasets prepared in array_record format, read with grain (no TensorFlow).

`tfds.data_source(name, split=..., data_dir=...)` gives random access to the records;
`data_dir` may be local or gs://. A packed row cannot be found without tokenizing
everything before it, so training reads a *stream* with an explicit position:

* Epoch e visits the records in the order of `grain.MapDataset.source(ds).shuffle(s_e)`
  (s_e derived from (seed, e); an O(1)-memory index shuffle), and process p of P reads
  only records p, p+P, p+2P, ... of that order.
* Each record's text (`data.text_feature`, bytes or str) is tokenized, appended with
  EOS, and chunked into rows as in `packing.Chunker`.
* The position after a batch is {"step", "epoch", "cursor", "carry", "process"}:
  cursor = records of this process's share consumed in the epoch, carry = the tokens not
  yet in a row. It is per process; restoring it and reading yields exactly the batches
  that would have come next. The stream, hence the global batch, depends on P.

Validation is the first rows of the eval split read in stored order (the same on every
process; each keeps its slice of each batch), cycling through the split if it is short.
"""

from collections.abc import Iterator

import numpy as np

from wsdjax.data.errors import DataConfigError
from wsdjax.data.packing import Chunker


def open_split(name: str, split: str, data_dir: str | None):
  """The split as a random-access tfds data source (ArrayRecordDataSource)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not name:
    raise DataConfigError("data.tfds_name: is empty; name a TFDS dataset, e.g. 'lm1b'")
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DataConfigError(
        f"data.tfds_name: cannot open {name!r} split {split!r} in array_record format "
        f"from data_dir {data_dir!r}: {first}") from e
  if len(source) == 0:
    raise DataConfigError(f"data.tfds_name: split {split!r} of {name!r} is empty; choose a non-empty split")
  return source


def record_text(record, feature: str) -> str:
  """The text feature of a decoded record, as str."""
  try:
    value = record[feature]
  except KeyError:
    raise DataConfigError(
        f"data.text_feature: is {feature!r} but the records have {sorted(record)}; set it to "
        "one of those") from None
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  return str(value)


def epoch_seed(seed: int, epoch: int) -> int:
  """The grain shuffle seed of one epoch, derived from (seed, epoch)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class TfdsStream:
  """This process's training stream over one TFDS split, with a JSON-able position."""

  def __init__(self, source, text_feature: str, tokenizer, seq_len: int, local_batch: int,
               seed: int, process_index: int, process_count: int):
    import grain  # pylint: disable=g-import-not-at-top
    self._grain = grain
    self._source = source
    self._feature = text_feature
    self._tok = tokenizer
    self._seq_len = seq_len
    self._local_batch = local_batch
    self._seed = seed
    self._process = [process_index, process_count]
    if len(source) < process_count:
      raise DataConfigError(
          f"data.tfds_train_split: {len(source)} records for {process_count} processes; "
          "use a larger split or fewer processes")

  def _epoch_records(self, epoch: int):
    """This process's share of the epoch's shuffled record order (a grain MapDataset)."""
    p, count = self._process
    shuffled = self._grain.MapDataset.source(self._source).shuffle(
        seed=epoch_seed(self._seed, epoch))
    return shuffled[p::count]

  def initial_position(self) -> dict:
    return {"step": 0, "epoch": 0, "cursor": 0, "carry": [], "process": list(self._process)}

  def batches(self, position: dict) -> Iterator[tuple[np.ndarray, dict]]:
    """Yields (batch, position after it) forever, starting at `position`."""
    if list(position.get("process", self._process)) != self._process:
      raise ValueError(
          f"tfds position was saved by process {position['process']} (index, count); "
          f"this is {self._process}: each process must restore its own position")
    step, epoch, cursor = position["step"], position["epoch"], position["cursor"]
    chunker = Chunker(self._seq_len, self._tok.eos_id, position["carry"])
    records = self._epoch_records(epoch)
    rows = []
    while True:
      row = chunker.pop()
      if row is not None:
        rows.append(row)
        if len(rows) == self._local_batch:
          step += 1
          yield np.stack(rows), {"step": step, "epoch": epoch, "cursor": cursor,
                                 "carry": chunker.carry, "process": list(self._process)}
          rows = []
        continue
      if cursor >= len(records):
        epoch, cursor = epoch + 1, 0
        records = self._epoch_records(epoch)
      chunker.add(self._tok.encode(record_text(records[cursor], self._feature)))
      cursor += 1


def eval_rows(source, text_feature: str, tokenizer, seq_len: int, num_rows: int) -> np.ndarray:
  """int32 [num_rows, T + 1]: the first packed rows of `source` in stored order (cycled)."""
  chunker = Chunker(seq_len, tokenizer.eos_id)
  rows, index = [], 0
  while len(rows) < num_rows:
    row = chunker.pop()
    if row is None:
      chunker.add(tokenizer.encode(record_text(source[index % len(source)], text_feature)))
      index += 1
    else:
      rows.append(row)
  return np.stack(rows).astype(np.int32) if rows else np.zeros((0, seq_len + 1), np.int32)


def training_texts(source, text_feature: str, max_chars: int) -> list[str]:
  """The first records' texts in stored order, about `max_chars` characters in all."""
  texts, used = [], 0
  for i in range(len(source)):
    if used >= max_chars:
      break
    texts.append(record_text(source[i], text_feature))
    used += len(texts[-1])
  return texts
