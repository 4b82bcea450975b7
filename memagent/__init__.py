"""memagent: agent memory that lives in a MemoryLLM's latent memory pool.

Names load on first use, so `memagent.client` (gRPC only) does not import torch.
"""

import importlib

_EXPORTS = {
    "Chunking": "memagent.engine",
    "Engine": "memagent.engine",
    "NamedPool": "memagent.engine",
    "WriteReceipt": "memagent.engine",
    "load": "memagent.engines",
    "MemoryLLM": "memagent.model.memoryllm",
    "MemoryLLMConfig": "memagent.model.config",
    "MemoryPool": "memagent.model.memory_pool",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'memagent' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
