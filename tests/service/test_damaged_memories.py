"""A memory whose files are damaged (or whose log is missing or unreadable) is visible in Get,
refuses calls with FAILED_PRECONDITION while every other memory keeps serving, and `memagent
repair` (server stopped) salvages every intact entry and says exactly what it kept."""

from __future__ import annotations

import grpc
import pytest
from memagent_server.process import ServerProcess

from memagent.cli import main
from memagent.client import Client, ClientError
from memagent.store.write_ahead_log import FRAME, LOG_FILE

pytestmark = pytest.mark.timeout(300)

TEXTS = [f"Entry {i}: the gate code for block {i} is {4000 + i}." for i in range(1, 7)]


def _flip_in_record(log_path, index: int, into: int) -> None:
    data, at = bytearray(log_path.read_bytes()), 0
    for _ in range(index):
        at += FRAME.size + FRAME.unpack_from(data, at)[0]
    data[at + FRAME.size + into] ^= 0x02
    log_path.write_bytes(bytes(data))


def _refused(call) -> str:
    with pytest.raises(ClientError) as err:
        call()
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    return err.value.details


def test_damage_is_visible_isolated_and_repaired(tmp_path, capsys):
    data = tmp_path / "data"
    # Snapshots after every write: their check files name seed and model, for repairing a lost header.
    server = ServerProcess(data, tmp_path / "first.log", "--snapshot-every", "1")
    with Client(server.address) as client:
        for memory in ("hurt", "fine", "headless", "lost", "jammed"):
            client.create(memory)
            client.inject(memory, f"The first text of {memory}.")
        for text in TEXTS:
            client.inject("hurt", text)
    assert server.stop() == 0
    _flip_in_record(data / "default" / "hurt" / LOG_FILE, 4, 30)  # entry 4 of 7
    _flip_in_record(data / "default" / "headless" / LOG_FILE, 0, 10)  # the log header
    (data / "default" / "lost" / LOG_FILE).unlink()
    (data / "default" / "jammed" / LOG_FILE).unlink()
    (data / "default" / "jammed" / LOG_FILE).mkdir()  # reading it fails (EISDIR), as a failing disk would

    server = ServerProcess(data, tmp_path / "second.log")
    try:
        with Client(server.address) as client:
            hurt = client.get("hurt")
            assert "unreadable" in hurt.damage and "6 intact entries" in hurt.damage and hurt.entries == 6
            assert "header is unreadable" in client.get("headless").damage  # listed, not NOT_FOUND
            assert {m.memory_id: bool(m.damage) for m in client.list()} == {
                "fine": False,
                "headless": True,
                "hurt": True,
                "jammed": True,
                "lost": True,
            }
            assert "its log is missing" in client.get("lost").damage
            assert "its log cannot be read" in client.get("jammed").damage
            assert "memagent repair lost" in _refused(lambda: client.inject("lost", "A write into nothing."))
            assert "memagent repair jammed" in _refused(lambda: client.entries("jammed"))
            for call in (
                lambda: client.inject("hurt", "A write into damage."),
                lambda: client.entries("hurt"),
                lambda: client.ask("hurt", "What is the gate code for block 4?"),
                lambda: client.fork("hurt", "copy"),
            ):
                assert "memagent repair hurt" in _refused(call)
            with pytest.raises(ClientError) as err:  # never INTERNAL with a server path
                client.create("headless")
            assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
            assert client.inject("fine", "Other memories keep serving.").entry_id == 2
        assert main(["ls", "--server", server.address]) == 0
        assert "DAMAGED: its log header is unreadable" in capsys.readouterr().out
        assert main(["repair", "hurt", "--data-dir", str(data)]) == 1
        assert "in use by another process" in capsys.readouterr().err
    finally:
        assert server.stop() == 0

    assert main(["repair", "hurt", "--data-dir", str(data), "--dry-run"]) == 0
    assert "dry run: nothing was changed" in capsys.readouterr().out
    assert main(["repair", "hurt", "--data-dir", str(data)]) == 0
    report = capsys.readouterr().out
    assert "kept 6 entries (ids 1..7: 1-3, 5-7)" in report and "legible in the lost bytes: [4]" in report
    assert main(["repair", "headless", "--data-dir", str(data)]) == 0  # a snapshot names its seed and model
    assert "header was unreadable and was rebuilt" in capsys.readouterr().out
    for memory, problem in (("lost", "is missing"), ("jammed", "cannot be read")):
        assert main(["repair", memory, "--data-dir", str(data)]) == 0
        report = capsys.readouterr().out
        assert f"the log {problem}" in report and "nothing could be salvaged" in report

    server = ServerProcess(data, tmp_path / "third.log")
    try:
        with Client(server.address) as client:
            assert client.get("hurt").damage == "" and client.get("headless").damage == ""
            texts = ["The first text of hurt.", *TEXTS]
            assert [(e.entry_id, e.text) for e in client.entries("hurt")] == [
                (i, t) for i, t in enumerate(texts, 1) if i != 4
            ]
            assert client.inject("hurt", "After the repair.").entry_id == 8  # 4 is never given again
            assert [e.text for e in client.entries("headless")] == ["The first text of headless."]
            for memory in ("lost", "jammed"):
                assert client.get(memory).damage == "" and client.entries(memory) == []
                assert client.inject(memory, "Starting again.").entry_id == 2  # past the snapshot's
    finally:
        assert server.stop() == 0
