"""The model config: every architectural switch of the decoder-only Transformer."""

from __future__ import annotations

import dataclasses
from typing import Literal

from llm.config.base import check, config_class

PosEncoding = Literal["learned", "sinusoidal", "rope", "alibi", "shaw", "none"]
RopeScaling = Literal["none", "linear", "llama3"]
Norm = Literal["layernorm", "rmsnorm", "batchnorm"]
NormPlacement = Literal["pre", "post"]
Activation = Literal["relu", "gelu", "gelu_tanh", "swiglu", "geglu", "geglu_tanh"]
AttentionImpl = Literal["xla", "xla_flash", "jax", "cudnn", "pallas", "auto"]
RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
DType = Literal["float32", "bfloat16", "float16"]
KVCacheDType = Literal["auto", "int8"]
Arch = Literal["transformer", "ngram_mlp", "rnn", "lstm", "gru", "mamba", "t5"]
RECURRENT_ARCHS = ("rnn", "lstm", "gru")

GATED_ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh")  # geglu_tanh: T5 v1.1's gated-gelu
# switches of the attention and its blocks that a baseline arch would silently ignore
TRANSFORMER_ONLY = (
    "n_kv_heads", "head_dim", "qk_norm", "rope_scaling", "sliding_window", "attn_logit_softcap",
    "attention_impl", "qkv_bias", "out_bias", "mlp_bias", "attn_dropout", "remat", "residual",
)  # fmt: skip
T5_FIELDS = ("n_decoder_layers", "rel_buckets", "rel_max_distance", "scale_decoder_output")
# what arch t5 fixes (RMSNorm, pre-norm, relative bias only, bias-free projections)
T5_FIXED = dict(
    norm="rmsnorm", norm_placement="pre", pos_encoding="none", qk_norm=False, qkv_bias=False,
    out_bias=False, mlp_bias=False, sliding_window=None, attn_logit_softcap=None, residual=True,
    kv_cache_dtype="auto",
)  # fmt: skip
# mixture-of-experts switches other than n_experts itself (each refused while n_experts == 0)
MOE_FIELDS = (
    "experts_per_token", "moe_gate", "moe_renormalize", "capacity_factor", "moe_d_ff",
    "moe_shared_d_ff", "moe_shared_gate", "moe_lb_weight", "moe_z_weight", "moe_dropless",
)  # fmt: skip


@config_class
class ModelConfig:
    """Architecture of the decoder-only Transformer (sizes in elements unless noted), or of a
    classical baseline language model (`arch`): those read vocab_size, d_model, n_layers, d_ff,
    the dropouts, init_std, tie_embeddings, dtype and param_dtype, and their own fields below."""

    # transformer: llm/model/transformer.py; ngram_mlp: Bengio et al. 2003 (llm/model/ngram_mlp.py);
    # rnn / lstm / gru: stacked recurrent LMs with torch's cell equations (llm/model/recurrent.py);
    # t5: encoder-decoder, Raffel et al. 2020 (llm/model/encdec.py; llm.model.seq2seq_forward)
    arch: Arch = "transformer"
    vocab_size: int = 259  # token ids covered by embedding and output (259 = bytes + PAD/BOS/EOS)
    d_model: int = 128  # width of the residual stream
    n_layers: int = 2  # number of Transformer blocks (baselines: tanh / recurrent layers)
    n_heads: int = 4  # query heads per attention layer
    n_kv_heads: int | None = None  # key/value heads: None = n_heads (MHA), 1 = MQA, else GQA
    head_dim: int | None = None  # per-head width; None = d_model // n_heads
    d_ff: int = 512  # hidden width of the MLP (per branch if gated; ngram_mlp: tanh width)
    max_seq_len: int = 256  # longest sequence in tokens; size of the learned position table
    activation: Activation = "gelu"  # MLP nonlinearity; swiglu/geglu(_tanh) gated (3 matrices)
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
    # --- encoder / BERT (owner: helper A) ---
    causal: bool = True  # false: bidirectional self-attention (a BERT-style encoder; no decoding)
    embed_norm: bool = False  # LayerNorm on the summed embeddings before the first block (BERT)
    type_vocab_size: int = 0  # token-type (segment A/B) embedding rows added to the input; 0: none
    # --- curriculum variants: prefix-LM, Shaw, BatchNorm, block-sparse (owner: helper F) ---
    # sparse attention on top of the causal rule (Child et al. 2019): dense|strided|block_local
    attention_pattern: Literal["dense", "strided", "block_local"] = "dense"
    attention_block: int = 16  # strided: stride and local width; block_local: block size (tokens)
    prefix_lm: bool = False  # bidirectional over each document's prefix (forward's prefix_BL)
    shaw_max_distance: int = 16  # pos_encoding shaw: relative distances clipped to +-this (k)
    batchnorm_calibration_batches: int = 16  # norm batchnorm: training batches PreciseBN pools
    # --- mixture of experts (owner: helper D1) ---
    n_experts: int = 0  # routed experts per MLP (llm/model/moe.py); 0 = the dense MLP
    experts_per_token: int = 2  # k of top-k routing: experts each token is sent to
    moe_gate: Literal["softmax", "sigmoid"] = "softmax"  # router probabilities (sigmoid: DSv3)
    moe_renormalize: bool = True  # top-k weights rescaled to sum to 1 (Mixtral yes, Qwen2-MoE no)
    capacity_factor: float | None = None  # slots/expert = ceil(cf*L*k/E) per row; None: dropless
    moe_d_ff: int | None = None  # hidden width of each routed expert; None = d_ff
    moe_shared_d_ff: int = 0  # hidden width of an always-on shared expert; 0 = none
    moe_shared_gate: bool = False  # shared expert scaled by sigmoid(x . w) (Qwen2-MoE)
    moe_lb_weight: float = 0.01  # weight of the load-balancing loss E*sum f_e P_e (Switch)
    moe_z_weight: float = 0.0  # weight of the router z-loss mean logsumexp^2 (ST-MoE)
    moe_dropless: Literal["dense", "ragged"] = "dense"  # dropless: all experts | sort+ragged_dot
    # --- state-space model, arch mamba (owner: helper E) ---
    ssm_state: int = 16  # mamba: N, state size per inner channel of the selective SSM
    ssm_conv: int = 4  # mamba: width of the causal depthwise convolution, in tokens
    ssm_expand: int = 2  # mamba: inner width E = ssm_expand * d_model
    ssm_dt_rank: int | None = None  # mamba: rank of the step-size projection; None: ceil(d/16)
    # mamba: parallel = lax.associative_scan over time; sequential = the lax.scan reference
    ssm_scan: Literal["parallel", "sequential"] = "parallel"
    ssm_attention_every: int = 0  # mamba: 0 = pure SSM; k: every k-th layer is attention (Jamba)
    # --- encoder-decoder, arch t5 (owner: helper B) ---
    n_decoder_layers: int | None = None  # t5: decoder blocks (n_layers: encoder); None = n_layers
    rel_buckets: int = 32  # t5: relative-position buckets of the attention bias (per direction x2)
    rel_max_distance: int = 128  # t5: distances (tokens) at or beyond this share the last bucket
    scale_decoder_output: bool = True  # t5, tied: decoder state x d_model**-0.5 before the head

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            check(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        if self.arch == "transformer":  # the baselines have no attention heads
            self._check_heads()
        elif self.arch not in ("mamba", "t5"):  # mamba: _check_ssm; t5: _check_t5
            self._check_baseline()
        self._check_ssm()
        self._check_t5()
        self._check_encoder()
        self._check_curriculum()
        self._check_moe()
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

    def _check_encoder(self) -> None:
        """BERT's switches exist in the Transformer only; a baseline would ignore them."""
        types = self.type_vocab_size
        check(types >= 0, "type_vocab_size", f"must be >= 0, got {types}")
        check(
            self.causal or self.sliding_window is None,
            "sliding_window",
            "limits how far back a query looks; with causal=false it would be one-sided",
        )
        check(
            self.causal or self.kv_cache_dtype == "auto",
            "kv_cache_dtype",
            f"{self.kv_cache_dtype!r} sets the decode cache; causal=false (an encoder) never "
            "decodes, so it would be ignored",
        )
        for key in ("causal", "embed_norm", "type_vocab_size"):
            check(
                self.arch == "transformer" or getattr(self, key) == _DEFAULTS[key],
                key,
                f"is a Transformer switch; model.arch={self.arch!r} would ignore it "
                f"(rnn/lstm/gru: rnn_bidirectional is their encoder)",
            )

    def _check_curriculum(self) -> None:
        """Sparse patterns and prefix-LM are attention mask rules: a baseline would ignore
        them, the Pallas kernels cannot apply them, and they exclude each other."""
        block = self.attention_block
        check(block > 0, "attention_block", f"must be positive, got {block}")
        check(
            self.attention_pattern != "dense" or block == _DEFAULTS["attention_block"],
            "attention_block",
            "is read only by a sparse model.attention_pattern (strided, block_local), got dense",
        )
        for key in ("attention_pattern", "prefix_lm"):
            if getattr(self, key) == _DEFAULTS[key]:
                continue
            check(self.arch == "transformer", key, f"needs arch transformer, got {self.arch!r}")
            check(
                self.attention_impl != "pallas",
                key,
                "is a dense-mask rule; model.attention_impl='pallas' takes segment ids only "
                "(use xla, xla_flash or auto)",
            )
        check(
            not self.prefix_lm or self.attention_pattern == "dense",
            "prefix_lm",
            f"with attention_pattern={self.attention_pattern!r} is not supported",
        )
        check(not self.prefix_lm or self.causal, "prefix_lm", "needs causal=true")
        self._check_shaw()
        if self.norm == "batchnorm":  # llm/model/batchnorm.py: the decoder passes token masks
            check(self.arch == "transformer", "norm", f"batchnorm needs arch transformer, got "
                  f"{self.arch!r}")  # fmt: skip
            check(not self.embed_norm, "embed_norm", "is not supported with norm batchnorm")
        n_cal = self.batchnorm_calibration_batches
        check(n_cal > 0, "batchnorm_calibration_batches", f"must be positive, got {n_cal}")
        check(self.norm == "batchnorm" or n_cal == 16, "batchnorm_calibration_batches",
              f"is read by norm batchnorm only, got norm {self.norm!r}")  # fmt: skip

    def _check_shaw(self) -> None:
        """Shaw et al.'s relative positions live in the reference attention only."""
        k = self.shaw_max_distance
        check(k > 0, "shaw_max_distance", f"must be positive, got {k}")
        if self.pos_encoding != "shaw":
            check(
                k == _DEFAULTS["shaw_max_distance"],
                "shaw_max_distance",
                f"is read only by pos_encoding shaw, got {self.pos_encoding!r}",
            )
            return
        check(self.arch == "transformer", "pos_encoding", f"shaw needs arch transformer, "
              f"got {self.arch!r}")  # fmt: skip
        check(
            self.attention_impl in ("xla", "auto"),
            "attention_impl",
            f"pos_encoding shaw adds relative key and value terms in the reference attention "
            f"only: use xla or auto (which then runs xla), got {self.attention_impl!r}",
        )

    def _check_moe(self) -> None:
        """Mixture-of-experts fields: read only when n_experts > 0, by the Transformer."""
        E, k = self.n_experts, self.experts_per_token
        check(E >= 0, "n_experts", f"must be >= 0 (0 = dense MLP), got {E}")
        if E == 0:
            for key in MOE_FIELDS:
                check(
                    getattr(self, key) == _DEFAULTS[key],
                    key,
                    "is read only by a mixture-of-experts MLP; set model.n_experts > 0",
                )
            return
        check(self.arch == "transformer", "n_experts", f"needs arch transformer, got {self.arch!r}")
        check(1 <= k <= E, "experts_per_token", f"must be in [1, n_experts={E}], got {k}")
        cf = self.capacity_factor
        check(cf is None or cf > 0, "capacity_factor", f"must be positive or null, got {cf}")
        check(
            cf is None or self.moe_dropless == "dense",
            "moe_dropless",
            "picks the dropless path; with a capacity_factor tokens are dispatched by capacity",
        )
        check(self.moe_d_ff is None or self.moe_d_ff > 0, "moe_d_ff", "must be positive or null")
        check(self.moe_shared_d_ff >= 0, "moe_shared_d_ff", "must be >= 0 (0 = none)")
        check(
            not self.moe_shared_gate or self.moe_shared_d_ff > 0,
            "moe_shared_gate",
            "gates the shared expert; set moe_shared_d_ff > 0",
        )
        for key in ("moe_lb_weight", "moe_z_weight"):
            check(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        check(not self.mlp_bias, "mlp_bias", "the MoE experts have no biases (n_experts > 0)")

    def _check_ssm(self) -> None:
        """Mamba's fields (read by arch mamba only) and the Transformer switches it honours:
        remat always; the attention ones only in a hybrid (ssm_attention_every > 0), whose
        attention layers are Transformer blocks that read positions through rope / alibi."""
        keys = ("ssm_state", "ssm_conv", "ssm_expand", "ssm_dt_rank", "ssm_scan",
                "ssm_attention_every")  # fmt: skip
        if self.arch != "mamba":
            for key in keys:
                check(getattr(self, key) == _DEFAULTS[key], key,
                      f"is read only by arch mamba, got arch {self.arch!r}")  # fmt: skip
            return
        for key in ("ssm_state", "ssm_conv", "ssm_expand"):
            check(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        rank = self.ssm_dt_rank
        check(rank is None or rank > 0, "ssm_dt_rank", f"must be positive or null, got {rank}")
        every = self.ssm_attention_every
        check(0 <= every <= self.n_layers, "ssm_attention_every",
              f"must be in [0, n_layers={self.n_layers}] (0: none), got {every}")  # fmt: skip
        check(self.norm_placement == "pre", "norm_placement", "mamba blocks are pre-norm")
        hybrid_ok = ("remat",) + (TRANSFORMER_ONLY[:-1] if every else ())  # never "residual"
        for key in TRANSFORMER_ONLY:
            check(
                key in hybrid_ok or getattr(self, key) == _DEFAULTS[key], key,
                f"is a Transformer switch that model.arch='mamba' with ssm_attention_every="
                f"{every} would ignore (leave it at {_DEFAULTS[key]!r})",
            )  # fmt: skip
        if not every:
            check(self.kv_cache_dtype == "auto", "kv_cache_dtype",
                  "a pure mamba model caches float32 states, no keys and values")  # fmt: skip
            return
        self._check_heads()
        check(
            self.pos_encoding in ("rope", "alibi", "none"),
            "pos_encoding",
            f"a hybrid's attention layers read positions through rope, alibi or none "
            f"(the embedding carries none), got {self.pos_encoding!r}",
        )

    def _check_t5(self) -> None:
        """arch t5 (llm/model/encdec.py): its own fields are refused elsewhere; the
        Transformer switches it does not implement are refused by name."""
        if self.arch != "t5":
            for key in T5_FIELDS:
                check(getattr(self, key) == _DEFAULTS[key], key, f"is read only by arch t5, "
                      f"got arch {self.arch!r}")  # fmt: skip
            return
        self._check_heads()
        for key, value in T5_FIXED.items():
            check(getattr(self, key) == value, key, f"arch t5 supports only {value!r} "
                  f"(T5's design), got {getattr(self, key)!r}")  # fmt: skip
        check(self.kv_heads == self.n_heads, "n_kv_heads", "arch t5 has no grouped-query heads")
        check(self.attention_impl in ("auto", "xla"), "attention_impl", "arch t5 runs the "
              "reference attention (its relative bias is additive): use auto or xla")  # fmt: skip
        dec = self.n_decoder_layers
        check(dec is None or dec > 0, "n_decoder_layers", f"must be positive or null, got {dec}")
        check(self.rel_buckets >= 4, "rel_buckets", f"must be >= 4, got {self.rel_buckets}")
        check(self.rel_max_distance > self.rel_buckets // 2, "rel_max_distance",
              f"must exceed rel_buckets // 2 = {self.rel_buckets // 2}")  # fmt: skip
        check(self.scale_decoder_output or self.tie_embeddings, "scale_decoder_output",
              "applies to a tied output layer only (tie_embeddings=true)")  # fmt: skip

    @property
    def decoder_layers(self) -> int:
        """t5: the decoder's block count."""
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers

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
