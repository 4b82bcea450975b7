from llama_index.llms.memagent.base import MemAgentLLM

__all__ = ["MemAgentLLM"]
