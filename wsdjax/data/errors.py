"""The data package's configuration error."""

from wsdjax.runtime.errors import BadInput


class DataConfigError(BadInput, ValueError):
  """A data setting that cannot work.

  The message is one line that names the config field at fault and, where there is one,
  the value to set instead, e.g. `model.vocab_size: is 512 but the bytes tokenizer has 256
  tokens; set --config.model.vocab_size=256`.
  """
