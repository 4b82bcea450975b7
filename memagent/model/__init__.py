"""Tensors: the MemoryLLM module, its memory pool, caches, generation, checkpoint loading."""
