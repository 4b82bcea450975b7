"""What the LangChain and LlamaIndex adapters share: the memory backend, constructor fields, event records."""
