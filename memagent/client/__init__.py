"""Clients for a memagent server: `Client` (blocking) and `AsyncClient` (asyncio).

from memagent.client import Client
client = Client("127.0.0.1:50051", token=None)
client.create("alice")
receipt = client.inject("alice", "Alice's cat is called Miso.", source="chat")
print(client.ask("alice", "What is the cat called?"))
for piece in client.generate("alice", "Alice's cat", max_new_tokens=16):
    print(piece, end="")
"""

from memagent.client.async_client import AsyncClient
from memagent.client.sync_client import Client
from memagent.client.streams import AsyncGenerationStream, GenerationStream
from memagent.client.types import Answer, ClientError, Completion, Entry, ForgetResult, MemoryInfo, Receipt, Text

__all__ = [
    "Answer",
    "AsyncClient",
    "AsyncGenerationStream",
    "Client",
    "ClientError",
    "Completion",
    "Entry",
    "ForgetResult",
    "GenerationStream",
    "MemoryInfo",
    "Receipt",
    "Text",
]
