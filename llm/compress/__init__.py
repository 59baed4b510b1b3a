"""Compression: quantization, pruning and distillation of a trained model (docs/compression.md).

    llm quantize --checkpoint DIR --method rtn|gptq|awq|smoothquant --bits 4 --out DIR
    llm prune --checkpoint DIR --method magnitude|wanda|sparsegpt --sparsity 0.5 --out DIR

The quantized weight format itself lives below the model (llm/ops/quantized.py) so the forward
pass consumes it directly; this package holds the methods that produce it (calibration, GPTQ,
AWQ, SmoothQuant, quantization-aware training) and the pruning methods. It imports nothing here;
its modules import the model, data, peft and inference layers, never llm.checkpoint (only the
commands load models), because llm.checkpoint imports `sparsity` to register the pruning mask.
"""
