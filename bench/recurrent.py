"""Our RNN / LSTM / GRU language models against torch's, same weights: agreement and speed.

    python bench/recurrent.py                       # B=16, L=128, D=128, 2 layers, CPU
    python bench/recurrent.py --d-model 256 --length 256 --reps 5

For each cell kind, builds `llm.model.recurrent.RecurrentLM` and the torch model it mirrors
(`nn.Embedding` -> `nn.RNN/LSTM/GRU` -> tied output layer) with the same weights
(`params_from_torch`), and prints: the largest logit difference and the largest relative
gradient difference (float32), then the median wall time of one training step's forward and
backward (cross-entropy on random tokens, jitted for us, eager for torch; the first call, which
compiles, is excluded) and their ratio. The peer is torch's CPU RNN kernels, one thread by
default: on a shared, oversubscribed machine torch's second thread spins and runs 4-15x
slower, which would flatter us.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from llm.config import ModelConfig
from llm.model import forward
from llm.model.recurrent import params_from_torch

TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def _models(arch: str, args) -> tuple[ModelConfig, dict, torch.nn.Module, torch.nn.Embedding]:
    cfg = ModelConfig(arch=arch, vocab_size=args.vocab, d_model=args.d_model,
                      n_layers=args.layers, n_heads=1, tie_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    rnn = TORCH[arch](args.d_model, args.d_model, num_layers=args.layers, batch_first=True)
    embed = torch.nn.Embedding(args.vocab, args.d_model)
    weights = {k: v.detach().numpy() for k, v in rnn.state_dict().items()}
    params = {"token_embed": embed.weight.detach().numpy(), **params_from_torch(cfg, weights)}
    return cfg, jax.tree.map(jnp.asarray, params), rnn, embed


def _torch_step(rnn, embed, tokens, targets):
    for p in (*rnn.parameters(), embed.weight):
        p.grad = None
    hidden, _ = rnn(embed(tokens))
    logits = hidden @ embed.weight.T
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    return logits, loss


def _median_time(fn, reps: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(arch: str, args) -> dict:
    cfg, params, rnn, embed = _models(arch, args)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, args.vocab, size=(args.batch, args.length + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def loss(p):
        logits = forward(cfg, p, jnp.asarray(inputs)).logits_BLV
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, jnp.asarray(targets)[..., None], -1).mean(), logits

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, logits), grads = step(params)
    t_in, t_out = torch.tensor(inputs), torch.tensor(targets)
    want_logits, _ = _torch_step(rnn, embed, t_in, t_out)
    want = params_from_torch(cfg, {k: v.grad.numpy() for k, v in rnn.named_parameters()})
    want["token_embed"] = embed.weight.grad.numpy()
    rel = max(np.abs(grads[k] - w).max() / np.abs(w).max() for k, w in want.items())
    ours_s = _median_time(lambda: jax.block_until_ready(step(params)), args.reps)
    torch_s = _median_time(lambda: _torch_step(rnn, embed, t_in, t_out), args.reps)
    return {
        "arch": arch,
        "logit_diff": float(np.abs(np.asarray(logits) - want_logits.detach().numpy()).max()),
        "grad_rel_diff": float(rel),
        "ours_ms": 1e3 * ours_s,
        "torch_ms": 1e3 * torch_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=259)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads (more spin when loaded)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    device, threads = jax.devices()[0].platform, torch.get_num_threads()
    print(f"B={args.batch} L={args.length} D={args.d_model} layers={args.layers} "
          f"V={args.vocab} on {device}, torch threads {threads}")  # fmt: skip
    print(
        "| cell | max logit diff | max grad diff (rel) | ours fwd+bwd ms | torch ms | ours/torch |"
    )
    print("|---|---|---|---|---|---|")
    for arch in TORCH:
        r = bench(arch, args)
        print(f"| {arch} | {r['logit_diff']:.1e} | {r['grad_rel_diff']:.1e} | {r['ours_ms']:.1f} "
              f"| {r['torch_ms']:.1f} | {r['ours_ms'] / r['torch_ms']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
