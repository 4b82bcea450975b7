"""memagent: agent memory that lives in a MemoryLLM's latent memory pool."""

from memagent.config import MemoryLLMConfig
from memagent.engine import Engine, Pool, WritePolicy, WriteReceipt, load
from memagent.memory_pool import MemoryPool
from memagent.model import MemoryLLM

__all__ = ["Engine", "MemoryLLM", "MemoryLLMConfig", "MemoryPool", "Pool", "WritePolicy", "WriteReceipt", "load"]
