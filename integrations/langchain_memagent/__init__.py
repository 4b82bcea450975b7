"""LangChain adapters for memagent: models that read a memory, and hooks that write agent events into one."""

from langchain_memagent.callbacks import MemAgentCallbackHandler
from langchain_memagent.chat_models import ChatMemAgent
from langchain_memagent.llms import MemAgentLLM
from langchain_memagent.middleware import MemAgentMiddleware
from langchain_memagent.store import MemAgentStore

__all__ = ["ChatMemAgent", "MemAgentCallbackHandler", "MemAgentLLM", "MemAgentMiddleware", "MemAgentStore"]
