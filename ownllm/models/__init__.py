"""Base models: the catalog, the GGUF → safetensors cache, tokenizer and chat template."""

from ownllm.models.cache import PreparedModel, prepare_model
from ownllm.models.catalog import DEFAULT_MODEL_ID, ModelLoadError, ModelSource, resolve_model

__all__ = [
    "DEFAULT_MODEL_ID",
    "ModelLoadError",
    "ModelSource",
    "PreparedModel",
    "prepare_model",
    "resolve_model",
]
