"""The decoder-only transformer (`transformer`), its KV-cache decoding (`decoding`), the
Hugging Face Llama mapping (`hf_llama`) and the kernels it can use (`kernels/`). Knows
nothing of data, schedules or checkpoints."""
