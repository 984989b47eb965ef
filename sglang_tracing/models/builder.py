"""Build model directories SGLang can serve without downloading anything.

A model dir holds a Llama config and a WordLevel tokenizer whose vocabulary is
``w3 … w{vocab-1}``: one word is exactly one token, so prompt lengths are exact.
Weights are not written; serve with ``--load-format dummy``.
"""
from __future__ import annotations

import json
from sglang_tracing.errors import UsageError
from pathlib import Path

SPECIAL_TOKENS = {"<unk>": 0, "<s>": 1, "</s>": 2}

# Name -> LlamaConfig fields. llama-2-7b is the architecture the project plan profiles.
ARCHITECTURES: dict[str, dict] = {
    "tiny-llama": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
        max_position_embeddings=4096, torch_dtype="float32",
    ),
    "llama-2-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
        max_position_embeddings=4096, torch_dtype="float16",
    ),
    "llama-2-70b": dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
        max_position_embeddings=4096, torch_dtype="float16",
    ),
}


def config_of(arch: dict) -> dict:
    """The config.json of a shipped architecture (an entry of ARCHITECTURES)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        **arch,
    }


def _tokenizer_json(vocab_size: int) -> dict:
    vocab = dict(SPECIAL_TOKENS)
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t, i in SPECIAL_TOKENS.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def build_model_dir(name: str, dest: str | Path) -> Path:
    """Write config + tokenizer of architecture ``name`` into ``dest`` (idempotent)."""
    if name not in ARCHITECTURES:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    arch = ARCHITECTURES[name]
    files = {
        "config.json": config_of(arch),
        "tokenizer.json": _tokenizer_json(arch["vocab_size"]),
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": False, "add_eos_token": False,
            "model_max_length": arch["max_position_embeddings"],
            "clean_up_tokenization_spaces": False,
        },
        "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2},
    }
    for fname, content in files.items():
        (dest / fname).write_text(json.dumps(content, indent=1))
    return dest


def prompt_of_length(n: int, seed: int = 0, vocab_size: int = 1024) -> str:
    """A prompt of exactly ``n`` tokens for the WordLevel tokenizer."""
    first = len(SPECIAL_TOKENS)
    span = vocab_size - first
    return " ".join(f"w{first + (seed * 7919 + i * 31) % span}" for i in range(n))
