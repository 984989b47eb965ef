"""sglang-tracing: trace where the time goes when SGLang serves an LLM."""
__version__ = "0.1.0"
