"""The examples in the adapters' docstrings run (on random weights instead of the default model)."""

import re
import textwrap

import pytest

import memagent
from langchain_memagent import ChatMemAgent, MemAgentCallbackHandler, MemAgentLLM, MemAgentStore
from llama_index.llms.memagent import MemAgentLLM as LlamaIndexMemAgentLLM
from llama_index.memory.memagent import MemAgentMemory, MemAgentMemoryBlock

CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


DOCUMENTED = [
    MemAgentLLM,
    ChatMemAgent,
    MemAgentCallbackHandler,
    MemAgentStore,
    LlamaIndexMemAgentLLM,
    MemAgentMemory,
    MemAgentMemoryBlock,
]


@pytest.mark.parametrize("documented", DOCUMENTED)
def test_docstring_example_runs(documented, tiny_engine, monkeypatch):
    monkeypatch.setattr(memagent, "load", lambda source=None, **kwargs: tiny_engine)
    (code,) = CODE_BLOCK.findall(documented.__doc__)
    exec(compile(textwrap.dedent(code), f"<{documented.__name__} docstring>", "exec"), {})
