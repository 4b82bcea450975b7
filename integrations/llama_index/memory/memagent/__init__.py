from llama_index.memory.memagent.base import MemAgentMemory
from llama_index.memory.memagent.block import MemAgentMemoryBlock

__all__ = ["MemAgentMemory", "MemAgentMemoryBlock"]
