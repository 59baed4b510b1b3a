"""The model config: every architectural switch of the decoder-only Transformer."""

from __future__ import annotations

import dataclasses
from typing import Literal

from llm.config.base import check, config_class

PosEncoding = Literal["learned", "sinusoidal", "rope", "alibi", "none"]
RopeScaling = Literal["none", "linear", "llama3"]
Norm = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post"]
Activation = Literal["relu", "gelu", "gelu_tanh", "swiglu", "geglu"]
AttentionImpl = Literal["xla", "xla_flash", "jax", "cudnn", "pallas", "auto"]
RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
DType = Literal["float32", "bfloat16", "float16"]
KVCacheDType = Literal["auto", "int8"]
Arch = Literal["transformer", "ngram_mlp", "rnn", "lstm", "gru"]
RECURRENT_ARCHS = ("rnn", "lstm", "gru")

GATED_ACTIVATIONS = ("swiglu", "geglu")
# switches of the attention and its blocks that a baseline arch would silently ignore
TRANSFORMER_ONLY = (
    "n_kv_heads", "head_dim", "qk_norm", "rope_scaling", "sliding_window", "attn_logit_softcap",
    "attention_impl", "qkv_bias", "out_bias", "mlp_bias", "attn_dropout", "remat", "residual",
)  # fmt: skip


@config_class
class ModelConfig:
    """Architecture of the decoder-only Transformer (sizes in elements unless noted), or of a
    classical baseline language model (`arch`): those read vocab_size, d_model, n_layers, d_ff,
    the dropouts, init_std, tie_embeddings, dtype and param_dtype, and their own fields below."""

    # transformer: llm/model/transformer.py; ngram_mlp: Bengio et al. 2003 (llm/model/ngram_mlp.py);
    # rnn / lstm / gru: stacked recurrent LMs with torch's cell equations (llm/model/recurrent.py)
    arch: Arch = "transformer"
    vocab_size: int = 259  # token ids covered by embedding and output (259 = bytes + PAD/BOS/EOS)
    d_model: int = 128  # width of the residual stream
    n_layers: int = 2  # number of Transformer blocks (baselines: tanh / recurrent layers)
    n_heads: int = 4  # query heads per attention layer
    n_kv_heads: int | None = None  # key/value heads: None = n_heads (MHA), 1 = MQA, else GQA
    head_dim: int | None = None  # per-head width; None = d_model // n_heads
    d_ff: int = 512  # hidden width of the MLP (per branch if gated; ngram_mlp: tanh width)
    max_seq_len: int = 256  # longest sequence in tokens; size of the learned position table
    activation: Activation = "gelu"  # MLP nonlinearity; swiglu/geglu are gated (3 matrices)
    norm: Norm = "layernorm"  # normalisation layer type
    norm_placement: NormPlacement = "pre"  # pre-norm (GPT-2, Llama) or post-norm (original)
    norm_eps: float = 1e-5  # epsilon added to the variance in every norm
    norm_bias: bool = True  # LayerNorm has a learned bias (RMSNorm never has one)
    qk_norm: bool = False  # RMSNorm on each query/key head before attention (OLMo-2, Qwen3)
    pos_encoding: PosEncoding = "learned"  # how positions enter the model
    rope_theta: float = 10000.0  # RoPE base wavelength
    rope_scaling: RopeScaling = "none"  # RoPE frequency scaling for context extension
    rope_scaling_factor: float = 1.0  # linear / llama3: context extension factor
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths above orig_len/low are divided
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below orig_len/high are kept
    rope_original_max_len: int = 8192  # llama3: context length the model was trained at
    sliding_window: int | None = None  # attend to at most this many latest tokens (self incl.)
    attn_logit_softcap: float | None = None  # cap * tanh(logits / cap) before softmax (Gemma-2)
    # xla: jnp reference; jax/cudnn: jax.nn.dot_product_attention;
    # pallas: llm/kernels (interpreted on CPU); auto: best available for the backend
    attention_impl: AttentionImpl = "auto"
    qkv_bias: bool = False  # bias on the query/key/value projections (GPT-2, Qwen2)
    out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # biases in the MLP (GPT-2)
    tie_embeddings: bool = True  # output layer reuses the token embedding matrix
    embed_dropout: float = 0.0  # dropout rate on the embedding output
    attn_dropout: float = 0.0  # dropout rate on attention probabilities
    resid_dropout: float = 0.0  # dropout rate on each residual branch output
    init_std: float = 0.02  # std of the normal initialiser for weight matrices
    scale_residual_init: bool = True  # residual out-projections use std / sqrt(2 n_layers) (GPT-2)
    residual: bool = True  # false: each block's branches replace the stream (an ablation)
    dtype: DType = "float32"  # computation dtype of activations and matmuls
    param_dtype: DType = "float32"  # storage dtype of the parameters
    remat: RematPolicy = "none"  # activation recomputation per block: none|full|dots|dots_no_batch
    scan_layers: bool = True  # lax.scan over stacked blocks (compile O(1) in depth); false: unroll
    kv_cache_dtype: KVCacheDType = "auto"  # decode cache: auto = dtype; int8 = codes + scale/token
    rnn_bidirectional: bool = False  # rnn/lstm/gru: also read right-to-left (an encoder, not an LM)
    ngram_context: int = 4  # ngram_mlp: previous tokens the model reads (n - 1 of an n-gram)
    ngram_direct: bool = False  # ngram_mlp: Bengio's direct embedding -> output connections

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            check(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        if self.arch == "transformer":  # the baselines have no attention heads
            self._check_heads()
        else:
            self._check_baseline()
        check(
            self.pos_encoding != "sinusoidal" or self.d_model % 2 == 0,
            "d_model",
            f"sinusoidal positions need an even d_model, got {self.d_model}",
        )
        check(
            self.rope_scaling == "none" or self.pos_encoding == "rope",
            "rope_scaling",
            f"is {self.rope_scaling!r} but pos_encoding is {self.pos_encoding!r}",
        )
        check(self.rope_theta > 0, "rope_theta", "must be positive")
        check(self.rope_scaling_factor >= 1.0, "rope_scaling_factor", "must be >= 1")
        check(
            self.rope_high_freq_factor > self.rope_low_freq_factor,
            "rope_high_freq_factor",
            "must exceed rope_low_freq_factor",
        )
        check(self.norm_eps > 0, "norm_eps", "must be positive")
        check(
            self.sliding_window is None or self.sliding_window > 0,
            "sliding_window",
            "must be positive or null",
        )
        check(
            self.attn_logit_softcap is None or self.attn_logit_softcap > 0,
            "attn_logit_softcap",
            "must be positive or null",
        )
        for key in ("embed_dropout", "attn_dropout", "resid_dropout"):
            rate = getattr(self, key)
            check(0.0 <= rate < 1.0, key, f"must be in [0, 1), got {rate}")
        check(self.init_std > 0, "init_std", "must be positive")
        check(
            self.ngram_context > 0, "ngram_context", f"must be positive, got {self.ngram_context}"
        )
        check(
            not self.rnn_bidirectional or self.arch in RECURRENT_ARCHS,
            "rnn_bidirectional",
            f"needs arch rnn, lstm or gru, got {self.arch!r}",
        )
        for key in ("ngram_context", "ngram_direct"):
            check(
                self.arch == "ngram_mlp" or getattr(self, key) == _DEFAULTS[key],
                key,
                f"is read only by arch ngram_mlp, got arch {self.arch!r}",
            )

    def _check_baseline(self) -> None:
        """A Transformer-only switch set away from its default would be ignored by a baseline:
        refused by name. (Fields configs/default.yaml sets, like n_heads, activation or
        scan_layers, are accepted and not read, so `model.arch=lstm` works on any preset.)"""
        for key in TRANSFORMER_ONLY:
            check(
                getattr(self, key) == _DEFAULTS[key],
                key,
                f"is a Transformer switch; model.arch={self.arch!r} has no attention to apply "
                f"it to (leave it at {_DEFAULTS[key]!r})",
            )

    def _check_heads(self) -> None:
        check(
            self.head_dim is not None or self.d_model % self.n_heads == 0,
            "n_heads",
            f"d_model={self.d_model} is not divisible by n_heads={self.n_heads} "
            "(set head_dim explicitly to decouple them)",
        )
        check(self.head_dim is None or self.head_dim > 0, "head_dim", "must be positive")
        kv = self.kv_heads
        check(kv > 0, "n_kv_heads", f"must be positive, got {kv}")
        check(
            self.n_heads % kv == 0,
            "n_kv_heads",
            f"n_heads={self.n_heads} is not divisible by n_kv_heads={kv}",
        )
        check(
            self.pos_encoding != "rope" or self.head_size % 2 == 0,
            "head_dim",
            f"RoPE needs an even head_dim, got {self.head_size}",
        )

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def recurrent(self) -> bool:
        return self.arch in RECURRENT_ARCHS

    @property
    def gated(self) -> bool:
        return self.activation in GATED_ACTIVATIONS


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
