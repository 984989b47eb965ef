"""Facts about a served model from its config: which config, bytes per element, weight bytes."""
from __future__ import annotations

import json
import os

from sglang_tracing.models.builder import ARCHITECTURES, config_of

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp8": 1}


def dtype_bytes(model_config: dict | None) -> int:
    """Bytes per weight or activation element of a model config's ``torch_dtype`` (fp16 when unsaid)."""
    return DTYPE_BYTES.get(str((model_config or {}).get("torch_dtype", "float16")), 2)


def model_config(manifest: dict, override: str | None = None) -> dict | None:
    """The served model's config: ``override`` (a shipped architecture name or a config.json path),
    else the copy recorded in the manifest, else the model path's config.json if still there."""
    if override:
        if override in ARCHITECTURES:
            return config_of(ARCHITECTURES[override])
        with open(override) as f:
            return json.load(f)
    if manifest.get("model_config"):
        return manifest["model_config"]
    path = (manifest.get("server_args") or {}).get("model_path")
    cfg_path = os.path.join(path, "config.json") if isinstance(path, str) else None
    if cfg_path and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            return json.load(f)
    return None


def weight_bytes(cfg: dict | None) -> int | None:
    """Parameter bytes of a Llama-family config (None: not one, or no config)."""
    if not cfg:
        return None
    try:
        h, inter, layers, vocab = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                                   cfg["vocab_size"])
        heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    except KeyError:
        return None
    head_dim = h // heads
    per_layer = h * (heads * head_dim) + 2 * h * (kv * head_dim) + (heads * head_dim) * h + 3 * h * inter + 2 * h
    params = layers * per_layer + 2 * vocab * h + h
    return params * dtype_bytes(cfg)
