"""Evaluation: scoring models on tasks, and the statistics that make the numbers trustworthy.

    likelihood.Scorer        log-likelihoods, rolling log-likelihoods, greedy generation
    runner                   `llm eval --tasks`: ppl / mc / gen / harness tasks -> results JSON
    harness                  the Scorer as an lm-evaluation-harness LM (extra `eval`)
    bleu, chrf, rouge, overlap, diversity    generation metrics (sacrebleu / rouge-score parity)
    significance, calibration, comparison    intervals, paired tests, ECE, temperature scaling
    contamination            task items' n-gram overlap with a training corpus
    scaling, sweep           Chinchilla-style laws fitted to a ladder of training runs
    exact_match, classification, fewshot     fine-tuning-time metrics and prompting baselines

Everything here reads models and data through llm.checkpoint, llm.inference and llm.data; only
`sweep` trains (through llm.train, one run per rung). The commands import it; inside the
package only llm.train's classification loss does, for the metrics of `classification`.
See docs/evaluation.md.
"""
