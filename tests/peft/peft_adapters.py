"""LoRA adapters made by Hugging Face PEFT on the tiny random transformers Llama (or another
tiny model), saved as PEFT directories (adapter_config.json + adapter_model.safetensors)."""

from __future__ import annotations

from pathlib import Path

from tests.interop.hf_models import make_hf_model

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_peft_adapter(out: Path, seed=0, rslora=False, modules=MODULES, arch="llama", **extra):
    """A PEFT LoRA adapter (r 4, alpha 8) with random lora_A *and* lora_B
    (`init_lora_weights=False`: a zero B would hide a transposed layout), saved to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, use_rslora=rslora, target_modules=list(modules),
                        init_lora_weights=False, **extra)  # fmt: skip
    model = get_peft_model(make_hf_model(arch), config)
    model.save_pretrained(out)
    return out
