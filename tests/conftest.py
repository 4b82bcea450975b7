from pathlib import Path

import pytest
import torch

import memagent

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_CASES = sorted(p.name for p in (FIXTURES / "reference").iterdir() if p.is_dir())


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_engine() -> memagent.Engine:
    """Random weights of the `tiny` shape with the default's tokenizer (deterministic)."""
    return memagent.load("random:tiny")


@pytest.fixture(scope="session")
def default_engine() -> memagent.Engine:
    """The shipped default, loaded once for the tests that need its behaviour."""
    return memagent.load()


class CountedApplies:
    """The engine's `apply`, counting the chunks it writes into pools (any thread's)."""

    def __init__(self, engine: memagent.Engine, monkeypatch: pytest.MonkeyPatch):
        self.chunks = 0
        self._apply = engine.apply
        monkeypatch.setattr(engine, "apply", self)

    def __call__(self, pool, chunks, **options):
        self.chunks += len(chunks)
        return self._apply(pool, chunks, **options)


@pytest.fixture
def applies(tiny_engine, monkeypatch) -> CountedApplies:
    """Counts the chunks `tiny_engine` writes while the test runs."""
    return CountedApplies(tiny_engine, monkeypatch)
