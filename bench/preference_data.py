"""What preference rows cost and hold: pairs rendered per second, lengths, rows skipped.

    llm data preferences --out prefs/                                      # the sets
    python bench/preference_data.py prefs                                  # byte-level
    python bench/preference_data.py prefs --tokenizer models/smollm2/tokenizer.json

For the pairs (`loss.name=dpo`, prefs/train.jsonl) and the KTO variant (`loss.name=kto`,
prefs/kto/train.jsonl) at each `--seq-len`, prints the records of the train split, the rows
kept and skipped as over-long (`data.sft_overlong=skip`), the longest side, the median and
95th percentile of tokens a side, the completion (masked) tokens a side and the wall time of
`preference_rows` (reading, rendering with the tokenizer's chat template, laying out rows).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llm.checkpoint.load import tokenizer_with_template
from llm.config import load_config
from llm.data.preference import preference_rows
from llm.tokenizers import ByteTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prefs", help="output folder of `llm data preferences`")
    parser.add_argument("--tokenizer", default="byte", help="byte or a tokenizer.json path")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args()
    byte = args.tokenizer == "byte"
    tok = ByteTokenizer() if byte else tokenizer_with_template(args.tokenizer)
    for loss, corpus in (("dpo", "train.jsonl"), ("kto", "kto/train.jsonl")):
        for L in args.seq_len:
            cfg = load_config(None, [
                f"data.corpus={args.prefs}/{corpus}", "data.format=preference",
                f"data.tokenizer={args.tokenizer}", f"loss.name={loss}",
                "data.val_fraction=0.05", "data.sft_overlong=skip", f"train.seq_len={L}",
                f"model.max_seq_len={max(L, 256)}",
            ])  # fmt: skip
            start = time.perf_counter()
            rows, report, _ = preference_rows(cfg, "train", tok)
            seconds = time.perf_counter() - start
            tokens = (rows["segment_ids"] > 0).sum(-1)
            completion = rows["loss_mask"].sum(-1).mean()
            print(
                f"{args.tokenizer if not byte else 'byte'} {loss} L={L}: {report.records} "
                f"records -> {report.examples} rows, {report.skipped_overlong} skipped, longest "
                f"side {report.longest}; tokens a side p50 {np.median(tokens):.0f} p95 "
                f"{np.percentile(tokens, 95):.0f}; completion {completion:.1f}"
                f" a side; {seconds:.1f} s ({1000 * seconds / report.records:.2f} ms a record)",
                flush=True,
            )


if __name__ == "__main__":
    main()
