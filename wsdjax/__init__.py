"""wsdjax: Warmup-Stable-Decay language-model pretraining in JAX/Flax.

One run, every budget's decayed checkpoint: WSD, WSD-S and cyclic-cosine branch trees,
trained with a sharded, jitted Flax transformer and stored as an Orbax checkpoint tree.
"""

__version__ = "0.1.0"

# Where libtpu is installed (the [tpu] extra, which `make test` installs to compile TPU
# programs ahead of time) on a host without TPU chips, keep jax on the CPU before anything
# initialises it: otherwise libtpu prints its failed start-up to every program's console.
from wsdjax.runtime.tpu import host as _host  # noqa: E402 - standard library only

_host.cpu_only_without_tpu()
