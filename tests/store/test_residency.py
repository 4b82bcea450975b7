"""Residency tiers with an accelerator: device, then host memory, then disk (pools faked)."""

from __future__ import annotations

import types

import psutil
import torch

from memagent.store.residency import Residency


class FakePool:
    """Stands in for a MemoryPool on a device this machine may not have."""

    def __init__(self, nbytes: int = 100, long_term_tokens_nbytes: int = 0):
        self.nbytes = nbytes + long_term_tokens_nbytes
        self.long_term_tokens_nbytes = long_term_tokens_nbytes  # in host memory on every tier
        self.memory = types.SimpleNamespace(device=torch.device("cpu"), pinned=False)

    @property
    def off_device_nbytes(self) -> int:
        return self.long_term_tokens_nbytes if self.memory.device.type != "cpu" else 0

    def to(self, device, *, pin=False):
        self.memory.device = torch.device(device)
        self.memory.pinned = pin and self.memory.device.type == "cpu"
        return self


def test_device_then_host_then_disk():
    evicted = []
    residency = Residency("cuda", evicted.append, device_bytes=200, host_bytes=100)
    pools = {name: FakePool() for name in "abcd"}
    for name in "abc":
        residency.use(name, pools[name])
    assert [residency.tier(k) for k in "abc"] == ["host", "device", "device"]
    residency.use("d", pools["d"])  # b moves to the host, a (oldest there) goes to disk
    assert [residency.tier(k) for k in "abcd"] == ["disk", "host", "device", "device"] and evicted == ["a"]
    assert pools["b"].memory.pinned, "host copies go to page-locked memory"
    residency.use("b", pools["b"])  # back on the device on use
    assert residency.tier("b") == "device" and residency.counts() == {"device": 2, "host": 1}


def test_long_term_tokens_count_against_the_host_budget_not_the_devices():
    evicted = []
    residency = Residency("cuda", evicted.append, device_bytes=200, host_bytes=250)
    pools = {name: FakePool(100, long_term_tokens_nbytes=100) for name in "abc"}
    residency.use("a", pools["a"])
    residency.use("b", pools["b"])
    assert [residency.tier(k) for k in "ab"] == ["device", "device"], "200 bytes on the device, 200 in host memory"
    residency.use("c", pools["c"])  # a moves to the host: 400 bytes there with b and c's tokens; a goes to disk
    assert [residency.tier(k) for k in "abc"] == ["disk", "device", "device"] and evicted == ["a"]


def test_cuda_and_cuda_0_are_the_same_device():
    residency = Residency("cuda:0", lambda key: None, device_bytes=1000)
    pool = FakePool().to("cuda")
    residency.use("a", pool)
    assert residency.tier("a") == "device"


def test_budgets_default_to_a_share_of_the_machine():
    """With no flags, pools never fill the machine: older ones go to disk."""
    available = psutil.virtual_memory().total
    on_cpu = Residency("cpu", lambda key: None)
    assert 0 < on_cpu.device_bytes < available and on_cpu.host_bytes == 0
    on_gpu = Residency("cuda", lambda key: None, device_bytes=200)
    assert 0 < on_gpu.host_bytes < available


def test_the_default_budget_moves_the_oldest_pools_to_disk(monkeypatch):
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=1000, total=1000))
    evicted = []
    residency = Residency("cpu", evicted.append)  # a quarter of 1000 bytes: two pools of 100
    for name in "abc":
        residency.use(name, FakePool())
    assert evicted == ["a"] and [residency.tier(k) for k in "bc"] == ["device", "device"]
