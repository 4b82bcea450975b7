from llama_index.memory.memagent.base import MemAgentMemory

__all__ = ["MemAgentMemory"]
