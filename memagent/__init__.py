"""memagent: agent memory that lives in a MemoryLLM's latent memory pool.

Names load on first use, so `memagent.client` (gRPC only) does not import torch.
"""

import importlib

_EXPORTS = {
    "Engine": "memagent.engine",
    "Pool": "memagent.engine",
    "WritePolicy": "memagent.engine",
    "WriteReceipt": "memagent.engine",
    "load": "memagent.engine",
    "MemoryLLM": "memagent.model",
    "MemoryLLMConfig": "memagent.config",
    "MemoryPool": "memagent.memory_pool",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'memagent' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
