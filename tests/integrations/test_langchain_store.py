"""MemAgentStore keeps LangGraph's BaseStore contract where it applies, on a real local server and
on an in-process engine: exact get/list from the memory's log, put replaces, delete forgets,
search with a query answers from the memory."""

import pytest
from langgraph.store.base import InvalidNamespaceError

from langchain_memagent import MemAgentStore
from langchain_memagent.store import memory_id
from tests.integrations.conftest import new_memory_id


@pytest.fixture(params=["engine", "server"])
def store(request):
    if request.param == "engine":
        reach = {"engine": request.getfixturevalue("tiny_engine")}
    else:
        reach = {"server": request.getfixturevalue("server_address")}
    with MemAgentStore(**reach) as store:
        yield store


@pytest.fixture
def users() -> tuple[str, ...]:
    """A namespace prefix no other test uses."""
    return (new_memory_id(), "users")


def test_put_then_get_is_exact_and_the_memory_holds_the_value(store, users):
    alice = (*users, "alice")
    store.put(alice, "food", {"likes": "spicy ramen", "since": 2019})
    item = store.get(alice, "food")
    assert (item.namespace, item.key, item.value) == (alice, "food", {"likes": "spicy ramen", "since": 2019})
    assert item.created_at == item.updated_at
    [entry] = store.backend.using(memory_id(alice)).entries()
    assert entry.text == '{"key": "food", "likes": "spicy ramen", "since": 2019}'
    assert entry.source == "langgraph:store" and entry.metadata["langgraph.key"] == "food"
    assert store.get(alice, "drink") is None and store.get((*users, "nobody"), "food") is None


def test_put_over_a_key_replaces_it_and_keeps_its_creation_time(store, users):
    alice = (*users, "alice")
    store.put(alice, "food", {"likes": "ramen"})
    store.put(alice, "city", {"lives_in": "Lisbon"})
    first = store.get(alice, "food")
    store.put(alice, "food", {"likes": "curry"})
    item = store.get(alice, "food")
    assert item.value == {"likes": "curry"} and item.created_at == first.created_at
    assert item.updated_at >= first.updated_at
    log = store.backend.using(memory_id(alice)).entries()
    assert [e.metadata["langgraph.key"] for e in log] == ["city", "food"]


def test_delete_forgets_and_rebuilds_the_memory(store, users):
    alice = (*users, "alice")
    store.put(alice, "food", {"likes": "ramen"})
    store.put(alice, "city", {"lives_in": "Lisbon"})
    store.delete(alice, "food")
    store.delete(alice, "never-stored")
    assert store.get(alice, "food") is None and store.get(alice, "city").value == {"lives_in": "Lisbon"}
    assert [e.metadata["langgraph.key"] for e in store.backend.using(memory_id(alice)).entries()] == ["city"]


def test_search_without_a_query_lists_items_exactly_with_filter_and_paging(store, users):
    store.put((*users, "alice"), "food", {"likes": "ramen", "diet": "vegan"})
    store.put((*users, "bob"), "food", {"likes": "steak", "diet": "none"})
    store.put((*users, "bob"), "city", {"lives_in": "Oslo"})
    assert {(i.namespace[-1], i.key) for i in store.search(users)} == {("alice", "food"), ("bob", "food"), ("bob", "city")}
    assert [i.value["likes"] for i in store.search(users, filter={"diet": "vegan"})] == ["ramen"]
    assert [i.key for i in store.search((*users, "bob"))] == ["city", "food"]  # newest first
    assert [i.key for i in store.search((*users, "bob"), limit=1, offset=1)] == ["food"]
    with pytest.raises(ValueError, match="only equality"):
        store.search(users, filter={"diet": {"$ne": "vegan"}})


def test_search_with_a_query_answers_from_each_memory(store, users):
    store.put((*users, "alice"), "food", {"likes": "ramen"})
    store.put((*users, "bob"), "food", {"likes": "steak"})
    results = store.search(users, query="What food does the user like?")
    assert [r.namespace[-1] for r in results] == ["alice", "bob"]
    for result in results:
        expected = store.backend.using(memory_id(result.namespace)).ask("What food does the user like?")
        assert result.key == "recall" and result.value == {"query": "What food does the user like?", "answer": expected, "abstained": False}


def test_list_namespaces_by_prefix_suffix_and_depth(store, users):
    store.put((*users, "alice"), "food", {"likes": "ramen"})
    store.put((*users, "bob", "work"), "desk", {"floor": 3})
    assert store.list_namespaces(prefix=users) == [(*users, "alice"), (*users, "bob", "work")]
    assert store.list_namespaces(prefix=users, suffix=("work",)) == [(*users, "bob", "work")]
    assert store.list_namespaces(prefix=(users[0], "*"), max_depth=3) == [(*users, "alice"), (*users, "bob")]


def test_a_namespace_that_cannot_be_a_memory_id_is_refused(store):
    for bad in [(), ("users", "a.b"), ("users", "al ice"), ("-users",)]:
        with pytest.raises(InvalidNamespaceError):
            store.put(bad, "k", {"v": 1})


async def test_async_methods_match(store, users):
    alice = (*users, "alice")
    await store.aput(alice, "food", {"likes": "ramen"})
    assert (await store.aget(alice, "food")).value == {"likes": "ramen"}
    assert [i.key for i in await store.asearch(users)] == ["food"]
    await store.adelete(alice, "food")
    assert await store.aget(alice, "food") is None
