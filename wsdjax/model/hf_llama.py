"""wsdjax's transformer as Hugging Face's `LlamaForCausalLM`: config.json, the tensors of
model.safetensors, and a tokenizer.json for a SentencePiece model (used by wsdjax.export).

The two compute the same function (tests/integration/test_export.py: logits to 1e-4 in float32):
pre-norm blocks, RMSNorm y = x / sqrt(mean(x^2) + eps) * weight (the weight itself, not
1 + weight; eps `RMS_NORM_EPS`), "rotate half" RoPE with inv_freq theta^(-2i/Dh) (Llama's
layout: no q/k permutation), softmax(q k^T / sqrt(Dh)), query head h reading kv head
h // (H/K), SwiGLU down(silu(gate(x)) * up(x)), no biases, no embedding or logit scaling,
a tied or separate LM head. Flax kernels are (in, out), torch Linear weights (out, in):

  embed/embedding [V, D]        -> model.embed_tokens.weight [V, D]
  attn/query [D, H, Dh]         -> self_attn.q_proj.weight [H*Dh, D] (k_proj, v_proj: K)
  attn/out [H, Dh, D]           -> self_attn.o_proj.weight [D, H*Dh]
  mlp/gate, up [D, F]; down [F, D] -> mlp.gate_proj, up_proj [F, D]; down_proj [D, F]
  attn_norm, mlp_norm, final_norm -> input_layernorm, post_attention_layernorm, model.norm
  lm_head [D, V] (untied only)  -> lm_head.weight [V, D]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from wsdjax.runtime.errors import ConfigError

# wsdjax.model.transformer.RMSNorm's epsilon (tests/integration/test_export.py checks that they agree).
RMS_NORM_EPS = 1e-6
# ModelConfig fields with a place in Llama's config.json.
MAPPED_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size",
                 "seq_len", "tie_embeddings", "rope_theta", "init_std")
# ModelConfig fields that only choose how the same function is computed (kernels, layer
# loop, memory, activation dtype) and so do not reach the exported checkpoint.
NUMERICS_FIELDS = ("dtype", "scan_layers", "layer_loop", "remat", "attention_impl",
                   "dense_impl", "loss_impl", "swiglu_impl", "platform")
DTYPES = ("float32", "bfloat16", "float16")


def check_expressible(model_cfg) -> None:
  """ConfigError naming the first field of `model_cfg` (a ModelConfig) that
  LlamaForCausalLM cannot express. Any field besides MAPPED_FIELDS and NUMERICS_FIELDS (a
  feature added to the model later, e.g. QK-norm) counts as one unless it is at its
  default, which must leave the model as it is now."""
  known = set(MAPPED_FIELDS) | set(NUMERICS_FIELDS)
  for f in dataclasses.fields(model_cfg):
    value = getattr(model_cfg, f.name)
    if f.name not in known and value != f.default:
      raise ConfigError(f"model.{f.name}", f"is {value!r}, which Hugging Face's "
                        "LlamaForCausalLM cannot express",
                        f"only a model with it at its default ({f.default!r}) exports")


def check_dtype(dtype: str) -> None:
  """ConfigError unless the weights can be stored in `dtype` (one of DTYPES)."""
  if dtype not in DTYPES:
    raise ConfigError("--dtype", f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")


def llama_config(model_cfg, dtype: str = "float32", eos_id: int | None = None) -> dict:
  """config.json of the LlamaForCausalLM for `model_cfg`, its weights stored in `dtype`.

  A wsdjax document starts after an eos token (what `wsdjax.sample` feeds first), so the
  eos id, where the run has one, is the bos id too."""
  c = model_cfg
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.d_ff,
      "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
      "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
      "max_position_embeddings": c.seq_len, "rms_norm_eps": RMS_NORM_EPS,
      "rope_theta": float(c.rope_theta), "rope_scaling": None,
      "tie_word_embeddings": bool(c.tie_embeddings), "hidden_act": "silu",
      "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
      "initializer_range": c.init_std, "pretraining_tp": 1, "use_cache": True,
      "torch_dtype": dtype, "bos_token_id": eos_id, "eos_token_id": eos_id,
      "pad_token_id": None,
  }


def generation_config(eos_id: int | None, temperature: float = 0.8) -> dict:
  """generation_config.json: sampling at `wsdjax.sample`'s default temperature."""
  return {"bos_token_id": eos_id, "eos_token_id": eos_id, "do_sample": True,
          "temperature": temperature}


def _blocks(params: dict, n_layers: int) -> list[dict]:
  """The parameters of each block: slices of the stacked `layers` (scan_layers) or the
  `block_<i>` subtrees."""
  if "layers" in params:
    return [{name: {k: np.asarray(v)[i] for k, v in sub.items()}
             for name, sub in params["layers"].items()} for i in range(n_layers)]
  return [params[f"block_{i}"] for i in range(n_layers)]


def llama_tensors(params: dict, model_cfg, dtype: str = "float32") -> dict[str, np.ndarray]:
  """The state dict of LlamaForCausalLM (names -> contiguous arrays in `dtype`) holding
  `params`, wsdjax's parameter tree (host arrays) of a model of `model_cfg`."""
  c = model_cfg
  d, hd = c.d_model, c.n_heads * c.head_dim
  out = {"model.embed_tokens.weight": params["embed"]["embedding"],
         "model.norm.weight": params["final_norm"]["scale"]}
  if not c.tie_embeddings:
    out["lm_head.weight"] = np.asarray(params["lm_head"]).T
  for i, b in enumerate(_blocks(params, c.n_layers)):
    p = f"model.layers.{i}."
    attn, mlp = b["attn"], b["mlp"]
    kv = c.n_kv_heads * c.head_dim
    out.update({
        p + "input_layernorm.weight": b["attn_norm"]["scale"],
        p + "self_attn.q_proj.weight": np.reshape(attn["query"], (d, hd)).T,
        p + "self_attn.k_proj.weight": np.reshape(attn["key"], (d, kv)).T,
        p + "self_attn.v_proj.weight": np.reshape(attn["value"], (d, kv)).T,
        p + "self_attn.o_proj.weight": np.reshape(attn["out"], (hd, d)).T,
        p + "post_attention_layernorm.weight": b["mlp_norm"]["scale"],
        p + "mlp.gate_proj.weight": np.asarray(mlp["gate"]).T,
        p + "mlp.up_proj.weight": np.asarray(mlp["up"]).T,
        p + "mlp.down_proj.weight": np.asarray(mlp["down"]).T,
    })
  return {k: np.ascontiguousarray(np.asarray(v, np.float32).astype(_np_dtype(dtype)))
          for k, v in out.items()}


def _np_dtype(dtype: str) -> Any:
  if dtype == "bfloat16":
    import ml_dtypes  # jax's own dependency
    return ml_dtypes.bfloat16
  return np.dtype(dtype)


def sentencepiece_tokenizer(model_proto: bytes):
  """A `tokenizers.Tokenizer` that encodes like SentencePiece's `encode` with the model
  `model_proto` (BPE or unigram): its normalizer (the precompiled character map, extra
  whitespace removal, dummy prefix, "▁" for spaces), its pieces and scores (BPE merges
  ranked by piece score), <unk> and the control pieces (</s>) as special tokens."""
  from sentencepiece import sentencepiece_model_pb2
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  spec, trainer = proto.normalizer_spec, proto.trainer_spec
  tok = Tokenizer(_sentencepiece_model(proto))
  steps = []
  if spec.precompiled_charsmap:  # e.g. nmt_nfkc, SentencePiece's default
    steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:  # spaces only, as SentencePiece (after the char map)
    steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
              normalizers.Replace(Regex(" {2,}"), " ")]
  if spec.add_dummy_prefix:
    steps.append(normalizers.Prepend(" "))
  if spec.escape_whitespaces:
    steps.append(normalizers.Replace(" ", "▁"))
  tok.normalizer = normalizers.Sequence(steps)
  decode = [decoders.Replace("▁", " ")]
  if trainer.byte_fallback:
    decode.append(decoders.ByteFallback())
  decode.append(decoders.Fuse())
  if spec.add_dummy_prefix:
    decode.append(decoders.Strip(content=" ", left=1))
  tok.decoder = decoders.Sequence(decode)
  tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                          for p in proto.pieces if p.type in (2, 3)])  # UNKNOWN, CONTROL
  return tok


def bytes_tokenizer():
  """A `tokenizers.Tokenizer` that encodes like wsdjax's bytes tokenizer: id = UTF-8 byte,
  NUL dropped from the text (id 0 is the end-of-document token). Each byte is one token
  under the GPT-2 byte-to-character table (ByteLevel, no merges); decoding maps back and
  replaces invalid UTF-8."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
  tok = Tokenizer(models.BPE({char: byte for byte, char in _byte_chars().items()}, []))
  tok.normalizer = normalizers.Replace("\x00", "")
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  return tok


def _byte_chars() -> dict[int, str]:
  """GPT-2's byte -> printable character table (the ByteLevel alphabet): printable
  Latin-1 bytes stand for themselves, the others for chr(256 + n) in byte order."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  extra = iter(range(256, 512))
  return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


def _sentencepiece_model(proto):
  """The `tokenizers` model of a SentencePiece ModelProto: Unigram (type 1) or BPE."""
  from tokenizers import models
  trainer = proto.trainer_spec
  if trainer.model_type == 1:
    return models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=trainer.unk_id,
                          byte_fallback=trainer.byte_fallback)
  if trainer.model_type != 2:
    raise ValueError(f"sentencepiece model type {trainer.model_type}: only BPE (2) and "
                     "unigram (1) are converted")
  vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
  ranked = sorted((-score, i, piece[:k], piece[k:]) for piece, (score, i) in normal.items()
                  for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal)
  return models.BPE(vocab, [(a, b) for _, _, a, b in ranked], unk_token=trainer.unk_piece,
                    fuse_unk=True, byte_fallback=trainer.byte_fallback)
