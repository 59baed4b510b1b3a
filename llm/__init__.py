"""llm: large language models end to end in JAX.

The curated public surface; internals can move freely behind it.

    from llm import load_config, init_params, forward
    cfg = load_config("configs/tiny.yaml", ["model.n_layers=4"])
    params = init_params(cfg.model, jax.random.key(0))
    out = forward(cfg.model, params, tokens_BL)
"""

from llm.config import Config, ConfigError, ModelConfig, load_config, save_config
from llm.model import ModelOutput, abstract_params, forward, init_params, logical_axes, unembed

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "ModelConfig",
    "ModelOutput",
    "abstract_params",
    "forward",
    "init_params",
    "load_config",
    "logical_axes",
    "save_config",
    "unembed",
]
