"""A prefetching batch iterator: batches are made on a background thread.

The producer is a generator of (batch, position) pairs, where `position` is the JSON-able
position after that batch. A thread runs it up to `depth` batches ahead of the consumer,
so host-side input overlaps device compute; `last_wait_s` is how long the last `__next__`
blocked (0 when the batch was ready), for the trainer's input-time metric. `position()`
is the position after the batches *consumed* so far, not after those prefetched.
"""

import queue
import threading
import time
from collections.abc import Iterator

import numpy as np

_END = object()


def _produce(producer, out: queue.Queue, stop: threading.Event) -> None:
  """Thread body: puts the producer's items, then _END (or the exception it raised)."""
  try:
    for item in producer:
      if not _put(out, item, stop):
        return
    _put(out, _END, stop)
  except BaseException as e:  # pylint: disable=broad-except
    _put(out, e, stop)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
  """Blocks until there is room or `stop` is set; False if stopped."""
  while not stop.is_set():
    try:
      out.put(item, timeout=0.05)
      return True
    except queue.Full:
      continue
  return False


class BatchIterator:
  """Iterator over np.int32 batches with a prefetch thread (depth 0: no thread)."""

  def __init__(self, producer: Iterator[tuple[np.ndarray, dict]], start_position: dict,
               depth: int = 2):
    self._producer = producer
    self._position = dict(start_position)
    self.last_wait_s = 0.0
    self._stop = threading.Event()
    self._queue = None
    self._thread = None
    if depth > 0:
      self._queue = queue.Queue(maxsize=depth)
      # The thread holds no reference to self, so an unclosed iterator is still collected
      # (and its thread stopped by __del__).
      self._thread = threading.Thread(target=_produce, name="wsdjax-data", daemon=True,
                                      args=(producer, self._queue, self._stop))
      self._thread.start()

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    if self._stop.is_set():
      raise StopIteration
    start = time.perf_counter()
    if self._queue is None:
      item = next(self._producer, _END)
    else:
      item = self._queue.get()
    self.last_wait_s = time.perf_counter() - start
    if item is _END:
      self.close()
      raise StopIteration
    if isinstance(item, BaseException):
      self.close()
      raise item
    batch, self._position = item
    return batch

  def position(self) -> dict:
    """JSON-able position after the batches returned so far (e.g. {"step": 17})."""
    return dict(self._position)

  def close(self) -> None:
    """Stops the prefetch thread; further `next` calls raise StopIteration."""
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=5.0)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    self._stop.set()
