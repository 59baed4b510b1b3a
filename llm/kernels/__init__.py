"""Pallas kernels, one file per kernel, each with its jnp reference and an `interpret` flag.

* `flash_attention_gpu`: flash attention forward + backward, Triton lowering.
* `flash_attention_tpu`: the same for TPUs, Mosaic lowering.
* `decode_attention`:    few new queries against a ragged KV cache (Triton lowering).
* `flash_common`:        block sizes, block ranges and tile math the flash kernels share.

Import the module you need; nothing is imported here so `import llm` stays light.
"""
