"""wsdjax: Warmup-Stable-Decay language-model pretraining in JAX/Flax.

One run, every budget's decayed checkpoint: WSD, WSD-S and cyclic-cosine branch trees,
trained with a sharded, jitted Flax transformer and stored as an Orbax checkpoint tree.
The package's root holds the commands (`python -m wsdjax.<command>`); the library lives in
its folders (README "Architecture"). Importing it changes nothing.
"""

__version__ = "0.1.0"
