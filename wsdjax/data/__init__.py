"""Data for wsdjax: sources, tokenizers, packing, step-indexed batches, global arrays.

Public interface (what the trainer codes against):
  DataConfigError       a data setting that cannot work (ValueError, one-line message)
  build_pipeline(config, workdir=None, process_index=None, process_count=None) -> Pipeline
  Pipeline              .vocab_size .tokenizer .entropy_rate .local_batch_size
                        .fingerprint() .train_iterator(start_step, position) .eval_batches()
  BatchIterator         next() -> np.int32 [local_batch, seq_len + 1]; .position();
                        .last_wait_s; .close()
  to_global(local, sharding) -> jax.Array

Each row holds seq_len + 1 tokens: inputs row[:-1], targets row[1:].
"""

import numpy as np

from wsdjax.data.errors import DataConfigError
from wsdjax.data.iterator import BatchIterator
from wsdjax.data.pipeline import Pipeline, build_pipeline


def to_global(local: np.ndarray, sharding):
  """The global jax.Array whose process-local part is `local` (rows of this process).

  Every process passes its [local_batch, ...] rows; the batch dimension of the global
  array is local_batch * process_count, in process order, laid out by `sharding`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  return jax.make_array_from_process_local_data(sharding, np.asarray(local))


__all__ = ["BatchIterator", "DataConfigError", "Pipeline", "build_pipeline", "to_global"]
