"""ChatMemAgent passes langchain-tests' standard suites: unit tests on an in-process engine,
integration tests against an in-process engine and a real local server."""

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_memagent import ChatMemAgent
from tests.integrations.conftest import new_memory_id


class ChatMemAgentSuite:
    """The features MemoryLLM has, declared through the suites' own switches."""

    reach: dict = {}

    @property
    def chat_model_class(self) -> type[ChatMemAgent]:
        return ChatMemAgent

    @property
    def chat_model_params(self) -> dict:
        return self.reach

    @property
    def standard_chat_model_params(self) -> dict:
        # The suites' default of 100 tokens per answer only slows a tiny model down.
        return super().standard_chat_model_params | {"max_tokens": 8}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class OnEngine:
    @pytest.fixture(autouse=True)
    def _reach_engine(self, tiny_engine):
        type(self).reach = {"memory": new_memory_id(), "engine": tiny_engine}


class OnServer:
    @pytest.fixture(autouse=True)
    def _reach_server(self, server_address, server_client):
        memory = new_memory_id()
        server_client.create(memory)
        type(self).reach = {"memory": memory, "server": server_address}


class TestChatMemAgentUnit(OnEngine, ChatMemAgentSuite, ChatModelUnitTests):
    pass


class TestChatMemAgentIntegrationOnEngine(OnEngine, ChatMemAgentSuite, ChatModelIntegrationTests):
    pass


class TestChatMemAgentIntegrationOnServer(OnServer, ChatMemAgentSuite, ChatModelIntegrationTests):
    pass
