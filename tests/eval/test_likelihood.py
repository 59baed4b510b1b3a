"""Log-likelihood scoring (llm/eval/likelihood.py) against plain references.

* the batched, bucketed, length-sorted path equals `reference_loglikelihood` (one request,
  unpadded) to 1e-5, and minus the training cross-entropy (`cross_entropy_plain`) of the
  same tokens;
* tokenisation and rolling windows equal lm-evaluation-harness's own functions
  (`TemplateLM._encode_pair`, `get_rolling_token_windows` + `make_disjoint_window`);
* greedy generation equals a plain argmax decoder (full forwards, no KV cache) cut at the stop.
"""

from __future__ import annotations

import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.checkpoint import LoadedModel
from llm.config import load_config
from llm.eval.likelihood import Scorer, TokenRequest, reference_loglikelihood
from llm.model import forward, init_params
from llm.ops.cross_entropy import cross_entropy_plain
from llm.tokenizers import ByteTokenizer
from tests.data.sft_fixtures import chatml_tokenizer

MAX_LEN = 64
BATCH = 3  # one batch size in every test, so the jitted scorer compiles once per bucket
_MODELS: dict = {}
plain_forward = jax.jit(forward, static_argnums=0)


def greedy(cfg, params, prompt: list[int], n_new: int) -> list[int]:
    """`n_new` argmax tokens after `prompt` by full forwards over a fixed 64-token window (no
    KV cache, one compile; the padding after the text cannot change a causal model's logits)."""
    ids = list(prompt)
    for _ in range(n_new):
        window = np.zeros((1, MAX_LEN), np.int32)
        window[0, : len(ids)] = ids
        ids.append(int(jnp.argmax(plain_forward(cfg, params, window).logits_BLV[0, len(ids) - 1])))
    return ids[len(prompt) :]


def tiny_model(tokenizer=None, max_seq_len: int = MAX_LEN) -> LoadedModel:
    """A 2-layer, 32-wide random model (init_std 0.2, so its predictions are far from
    uniform) over bytes, or over `tokenizer`'s ids; params initialised once per length."""
    tokenizer = tokenizer or ByteTokenizer()
    overrides = [
        "model.vocab_size=320",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.d_ff=64",
        f"model.max_seq_len={max_seq_len}",
        "model.init_std=0.2",
        f"train.seq_len={max_seq_len}",
    ]
    cfg = load_config(None, overrides)
    if max_seq_len not in _MODELS:
        _MODELS[max_seq_len] = init_params(cfg.model, jax.random.key(0))
    return LoadedModel(cfg, _MODELS[max_seq_len], tokenizer, 0, "run", Path("tiny"))


REQUESTS = [
    ("Question: is the sky blue?\nAnswer:", " yes"),
    ("A ", "b"),  # the context's trailing space moves onto the continuation
    ("", "hello world"),  # empty context: conditioned on BOS alone
    ("Once upon a time", " there"),
    ("x" * 100, " tail of a long request"),  # context cut to fit max_len
    ("To be, or not to be", ", that is the question"),  # batches padded to 64, 40, 16
    ("ab", "c" * MAX_LEN),  # continuation of exactly max_len tokens: no context but BOS fits
]


def test_batched_equals_one_request_reference_and_restores_order():
    model = tiny_model()
    scorer = Scorer(model, batch_size=BATCH)  # 7 requests: batches of 3, 3, 1
    fast = scorer.loglikelihood(REQUESTS)
    cut = (1 + 100 + len(" tail of a long request") - (MAX_LEN + 1)) + (1 + 2 + 64 - (MAX_LEN + 1))
    assert (scorer.truncated, scorer.truncated_tokens) == (2, cut)
    for (context, continuation), got in zip(REQUESTS, fast, strict=True):
        request = scorer.fit(scorer.encode_pair(context, continuation))
        want = reference_loglikelihood(model.config.model, model.params, request)
        assert got.n_tokens == want.n_tokens == len(request.continuation)
        assert got.logprob == pytest.approx(want.logprob, rel=1e-5, abs=1e-5)
        assert got.is_greedy == want.is_greedy


def test_loglikelihood_is_minus_training_cross_entropy():
    model = tiny_model()
    text = "The quick brown fox jumps over the lazy dog."
    got = Scorer(model, batch_size=BATCH).loglikelihood([("", text)])[0]
    tokens = [ByteTokenizer.BOS, *ByteTokenizer().encode(text)]
    inputs, targets = jnp.asarray([tokens[:-1]]), jnp.asarray([tokens[1:]])
    logits = plain_forward(model.config.model, model.params, inputs).logits_BLV
    _, ce = cross_entropy_plain(logits, targets, jnp.ones_like(targets))
    assert got.n_tokens == len(text)
    assert got.logprob == pytest.approx(-float(ce), rel=1e-5)


def test_is_greedy_exactly_when_every_token_is_the_argmax():
    model = tiny_model()
    scorer = Scorer(model, batch_size=BATCH)
    context = "Hello"
    prompt = [ByteTokenizer.BOS, *ByteTokenizer().encode(context)]
    argmax = greedy(model.config.model, model.params, prompt, 4)
    other = [*argmax[:3], (argmax[3] + 1) % 256]
    requests = [TokenRequest(tuple(prompt), tuple(ids)) for ids in (argmax, other)]
    scored = scorer.score_tokens(requests)
    assert [s.is_greedy for s in scored] == [True, False]
    assert scored[0].logprob > scored[1].logprob


def test_encoding_equals_the_harness_encode_pair_with_bpe(tmp_path):
    from lm_eval.api.model import TemplateLM

    tok = chatml_tokenizer(tmp_path / "tok")
    scorer = Scorer(tiny_model(tok), add_bos=False)
    harness = types.SimpleNamespace(backend="causal", tok_encode=tok.encode)
    pairs = [
        ("What is the capital of France? ", "Paris"),  # trailing space moves
        ("The quick brown", " fox jumps"),
        ("The quick bro", "wn fox"),  # a word split across the boundary
        ("lazy  \n", "dog."),  # several whitespace characters move
    ]
    for context, continuation in pairs:
        ours = scorer.encode_pair(context, continuation)
        ctx, cont = TemplateLM._encode_pair(harness, context, continuation)
        assert (list(ours.context), list(ours.continuation)) == (ctx, cont)
    with_bos = Scorer(tiny_model(tok)).encode_pair("The quick", " fox")
    assert with_bos.context[0] == tok.bos_id


def test_rolling_windows_equal_the_harness_and_sum_them():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    model = tiny_model()
    scorer = Scorer(model, batch_size=BATCH)
    text = "".join(chr(97 + (i * 7) % 26) for i in range(150))  # 150 tokens: 3 windows
    tokens = ByteTokenizer().encode(text)
    harness = [
        make_disjoint_window(w)
        for w in get_rolling_token_windows(tokens, ByteTokenizer.BOS, MAX_LEN, 1)
    ]
    ours = scorer.rolling_windows(text)
    assert [(list(w.context), list(w.continuation)) for w in ours] == harness
    assert [len(w.context) for w in ours] == [1, 1, MAX_LEN + 1 - 22]
    got = scorer.loglikelihood_rolling([text, "short text"])
    by_hand = sum(reference_loglikelihood(model.config.model, model.params, w).logprob
                  for w in ours)  # fmt: skip
    assert got[0].n_tokens == 150
    assert got[0].logprob == pytest.approx(by_hand, rel=1e-5)
    one_forward = scorer.loglikelihood([("", "short text")])[0]
    assert got[1].logprob == pytest.approx(one_forward.logprob, rel=1e-6)
    assert scorer.truncated == 0


def test_generate_until_is_plain_greedy_cut_before_the_stop():
    model = tiny_model()
    scorer = Scorer(model, batch_size=BATCH)
    requests = [("Genesis", ["<", "&"], 12), ("Hi", ["N"], 12), ("Z", [], 5)]
    got = scorer.generate_until(requests)
    for (prompt, stops, max_new), answer in zip(requests, got, strict=True):
        ids = greedy(model.config.model, model.params, [ByteTokenizer.BOS, *prompt.encode()],
                     max_new)  # fmt: skip
        assert ByteTokenizer.EOS not in ids  # so only the stops and max_new end the text
        full = ByteTokenizer().decode(ids)
        assert all(s in full for s in stops)  # every stop string really cuts
        assert answer == full[: min(full.index(s) for s in stops)] if stops else answer == full
    assert got[0] == "$hh" and len(got[2]) == 5  # this model's answers, from the lines above


def test_errors_name_the_request():
    scorer = Scorer(tiny_model(), batch_size=BATCH)
    with pytest.raises(ValueError, match="empty continuation after context 'Answer:'"):
        scorer.loglikelihood([("Answer:", "")])
    with pytest.raises(ValueError, match="continuation of 65 tokens is longer than max_len=64"):
        scorer.loglikelihood([("a", "b" * 65)])
    with pytest.raises(ValueError, match="loglikelihood_rolling of an empty text"):
        scorer.loglikelihood_rolling([""])
    with pytest.raises(ValueError, match=r"max_new=64 must be in \[1, max_len=64\)"):
        scorer.generate_until([("a", [], 64)])
    with pytest.raises(ValueError, match=r"token ids \[400\] are outside the model's vocab"):
        scorer.score_tokens([TokenRequest((1, 2), (400,))])
    with pytest.raises(ValueError, match="max_len=128 must be in"):
        Scorer(tiny_model(), max_len=128)
    assert np.isfinite(scorer.loglikelihood([("a", "b" * 64)])[0].logprob)
    kept = scorer._prompt_ids("y" * 60 + "z" * 40, 8)  # a prompt too long for 64 - 8 slots
    assert kept == [ord("y")] * 16 + [ord("z")] * 40
    assert (scorer.truncated, scorer.truncated_tokens) == (2, 1 + 1 + 60 - 16)
