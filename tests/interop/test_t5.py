"""Parity with `transformers`' T5ForConditionalGeneration (tiny random models, float32).

Two variants, each a random model built here (nothing downloaded):
* v1.0: ReLU MLP, lm_head tied to `shared`, decoder output scaled by d_model**-0.5; 8
  relative buckets with max distance 12, so the logarithmic buckets are exercised;
* v1.1: gated-GELU MLP, a separate lm_head (`tie_word_embeddings: false`), no scale,
  head_dim 16 != d_model / heads, and fewer decoder layers (1) than encoder layers (2).
For each: `import_hf` (what `llm convert from-hf` runs) -> logits equal transformers' within
1e-5 relative to their scale with padding in the encoder; our cached greedy decoding equals
`generate(do_sample=False)`; `export_hf` (`llm convert to-hf`) -> `from_pretrained` gives
the original model's logits bit for bit.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from hf_models import max_rel_err, randomize, tiny_tokenizer_json

from llm.checkpoint import load_model
from llm.interop import UnsupportedConfig, export_hf, import_hf, model_config_from_hf
from llm.model import seq2seq_forward, seq2seq_generate

VOCAB = 300
RNG = np.random.default_rng(0)
ENC = RNG.integers(2, VOCAB, size=(2, 9))
ENC_MASK = np.array([[1] * 9, [1] * 6 + [0] * 3])  # row 1: 3 padding tokens
DEC = RNG.integers(2, VOCAB, size=(2, 6))
N_NEW = 8


def t5_config(variant: str):
    import transformers as T

    common = dict(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, dropout_rate=0.0)
    if variant == "v1_0":
        return T.T5Config(
            **common, d_kv=8, d_ff=64, feed_forward_proj="relu",
            relative_attention_num_buckets=8, relative_attention_max_distance=12,
        )  # fmt: skip
    return T.T5Config(**common, d_kv=16, d_ff=48, num_decoder_layers=1,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # fmt: skip


def make_t5(variant: str):
    import torch
    import transformers as T

    torch.manual_seed(0)
    model = T.T5ForConditionalGeneration(t5_config(variant))
    if variant == "v1_1":  # transformers 5 ties every T5 head: untie it as v1.1 files are
        model.lm_head.weight = torch.nn.Parameter(torch.zeros(VOCAB, 32))
        model.config.tie_word_embeddings = False
    randomize(model, 0)
    return model.eval()


def t5_logits(model, enc=ENC, mask=ENC_MASK, dec=DEC) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec))  # fmt: skip
    return out.logits.numpy()


@pytest.fixture(scope="module", params=["v1_0", "v1_1"])
def imported(request, tmp_path_factory):
    """(variant, HF model, its directory, our imported (config, params))."""
    model = make_t5(request.param)
    hf_dir = tmp_path_factory.mktemp(f"hf_t5_{request.param}")
    model.save_pretrained(hf_dir)
    (hf_dir / "tokenizer.json").write_text(tiny_tokenizer_json())
    out = tmp_path_factory.mktemp(f"ours_t5_{request.param}")
    import_hf(hf_dir, out)
    m = load_model(out)
    return request.param, model, hf_dir, (m.config.model, m.params)


def test_import_reads_the_variant(imported):
    variant, model, _, (cfg, params) = imported
    assert cfg.arch == "t5" and cfg.tie_embeddings == (variant == "v1_0")
    assert cfg.activation == ("relu" if variant == "v1_0" else "geglu_tanh")
    assert cfg.decoder_layers == model.config.num_decoder_layers
    assert ("lm_head" in params) == (variant == "v1_1")


def test_logits_match_transformers(imported):
    variant, model, _, (cfg, params) = imported
    ours = seq2seq_forward(cfg, params, jnp.asarray(ENC), jnp.asarray(DEC),
                           encoder_segment_ids_BS=jnp.asarray(ENC_MASK)).logits_BLV  # fmt: skip
    err = max_rel_err(ours, t5_logits(model))
    assert err < 1e-5, f"{variant}: max relative logit error {err:.2e}"


def test_greedy_matches_transformers(imported):
    import torch

    variant, model, _, (cfg, params) = imported
    with torch.no_grad():
        theirs = model.generate(
            input_ids=torch.tensor(ENC), attention_mask=torch.tensor(ENC_MASK),
            decoder_start_token_id=0, max_new_tokens=N_NEW, min_new_tokens=N_NEW,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )[:, 1:].numpy()  # fmt: skip
    ours = seq2seq_generate(cfg, params, jnp.asarray(ENC), jnp.asarray(ENC_MASK),
                            max_new_tokens=N_NEW, start_id=0, eos_id=None)  # fmt: skip
    # random T5s tend to repeat a token (the residual stream carries the input embedding);
    # two rows decoding to different tokens still make the equality mean something
    assert len(set(theirs.ravel().tolist())) > 1, f"{variant}: degenerate generation"
    np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_export_loads_in_transformers(imported, tmp_path):
    import transformers as T

    variant, model, hf_dir, (cfg, params) = imported
    export_hf(cfg, params, tmp_path, tokenizer_dir=hf_dir)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "t5"
    reloaded = T.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.scale_decoder_outputs == model.config.scale_decoder_outputs
    tied = reloaded.lm_head.weight.data_ptr() == reloaded.shared.weight.data_ptr()
    assert tied == (variant == "v1_0")
    np.testing.assert_array_equal(t5_logits(reloaded), t5_logits(model))


def test_transformers5_v1_1_layout_reads_tied_without_scale():
    """transformers 5 saves a fresh v1.1 with a tied head and `scale_decoder_outputs: false`."""
    hf = t5_config("v1_1").to_dict()
    assert hf["tie_word_embeddings"] is True and hf["scale_decoder_outputs"] is False
    cfg = model_config_from_hf(hf)
    assert cfg.tie_embeddings and not cfg.scale_decoder_output


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(feed_forward_proj="gated-relu"), "feed_forward_proj"),
        (dict(is_decoder=True), "is_decoder"),
        (dict(tie_word_embeddings=False, scale_decoder_outputs=True), "scale_decoder_outputs"),
        (dict(some_new_switch=1), "some_new_switch"),
    ],
)
def test_unsupported_config_is_refused_by_name(change, key):
    hf = {**t5_config("v1_0").to_dict(), **change}
    with pytest.raises(UnsupportedConfig, match=key):
        model_config_from_hf(hf)


def test_stack_embedding_copies_are_skipped(imported, tmp_path):
    """Older savers store `shared.weight` again per stack; T5 ties them, so they are unused."""
    from safetensors.numpy import load_file, save_file

    from llm.interop.hf_weights import load_hf_params

    _, _, hf_dir, (cfg, params) = imported
    tensors = load_file(hf_dir / "model.safetensors")
    extra = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    tensors |= dict.fromkeys(extra, tensors["shared.weight"])
    save_file(tensors, tmp_path / "model.safetensors")
    loaded, unused = load_hf_params(cfg, tmp_path)
    assert set(extra) <= set(unused)
    np.testing.assert_array_equal(loaded["token_embed"], params["token_embed"])
