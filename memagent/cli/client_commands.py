"""Client subcommands against a running server: inject, ask, chat, ls, rm, export, import.

The server address comes from --server or $MEMAGENT_SERVER; the token from $MEMAGENT_TOKEN,
--token-file (or $MEMAGENT_TOKEN_FILE), or --token (which other local users can see in the
process list: prefer the other two).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=os.environ.get("MEMAGENT_SERVER", "127.0.0.1:50051"), help="host:port")
    # Read at run time, not shown as a default: `--help` must not print a secret.
    common.add_argument(
        "--token", help="bearer token; default: $MEMAGENT_TOKEN (given here, `ps` shows it: prefer the variable)"
    )
    common.add_argument("--token-file", help="a file holding the bearer token; default: $MEMAGENT_TOKEN_FILE")
    common.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")

    def add(name: str, run, help: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(run=lambda args: _guarded(run, args))
        return parser

    p = add("inject", inject, "write text into a memory (created if missing); reads stdin without TEXT")
    p.add_argument("memory")
    p.add_argument("text", nargs="*")
    p.add_argument("--source", help="label stored with the text, e.g. a file name")

    p = add("ask", ask, "ask a question of a memory")
    p.add_argument("memory")
    p.add_argument("question", nargs="+")
    p.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: the server's, 32)")

    p = add("chat", chat, "chat with a memory (one line per turn; --message for a single turn)")
    p.add_argument("memory")
    p.add_argument("--message", help="one turn, then exit (default: one turn per line of stdin)")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest reply in tokens")

    p = add("ls", ls, "list memories, or with MEMORY the entries of its log")
    p.add_argument("memory", nargs="?")

    p = add("rm", rm, "delete a memory, or with --entry forget entries (the memory is rebuilt without them)")
    p.add_argument("memory")
    p.add_argument("--entry", type=int, action="append", help="entry id from `memagent ls MEMORY`; repeatable")

    p = add("export", export, "save a memory (log and pool) to a file")
    p.add_argument("memory")
    p.add_argument("file")

    p = add("import", import_, "create a memory from an exported file")
    p.add_argument("file")
    p.add_argument("--as", dest="memory", help="memory id to create (default: the exported one)")


def _client(args):
    from memagent.client import Client

    token_file = args.token_file or os.environ.get("MEMAGENT_TOKEN_FILE")
    token = Path(token_file).read_text().strip() if token_file else args.token or os.environ.get("MEMAGENT_TOKEN")
    return Client(args.server, token, tls=args.tls)


def _guarded(run, args) -> int:
    from memagent.client import ClientError

    try:
        with _client(args) as client:
            return run(client, args) or 0
    except ClientError as err:
        print(f"memagent {args.command}: {err}", file=sys.stderr)
        return 1


def inject(client, args) -> None:
    from memagent.client import ClientError

    text = " ".join(args.text) if args.text and args.text != ["-"] else sys.stdin.read()
    try:
        receipt = client.inject(args.memory, text, source=args.source)
    except ClientError as err:
        if err.code != grpc.StatusCode.NOT_FOUND:
            raise
        client.create(args.memory)
        receipt = client.inject(args.memory, text, source=args.source)
    print(f"entry {receipt.entry_id}: {receipt.tokens} tokens in {receipt.chunks} writes, step {receipt.step}")


def ask(client, args) -> None:
    options = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    print(client.ask(args.memory, " ".join(args.question), **options))


def chat(client, args) -> None:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    turns = [args.message] if args.message else (line.rstrip("\n") for line in sys.stdin)
    for turn in turns:
        if not turn.strip():
            continue
        messages.append({"role": "user", "content": turn})
        reply = []
        for piece in client.chat(args.memory, messages, max_new_tokens=args.max_new_tokens):
            reply.append(piece)
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})


def ls(client, args) -> None:
    if args.memory:
        for e in client.entries(args.memory):
            source = f" [{e.source}]" if e.source else ""
            print(f"{e.entry_id}\t{e.created:%Y-%m-%d %H:%M:%S}{source}\t{e.text[:80]!r}")
        return
    for m in client.list():
        damage = f"\tDAMAGED: {m.damage}" if m.damage else ""
        print(f"{m.memory_id}\tstep {m.step}\t{m.entries} entries\t{m.tokens_written} tokens\t{m.residency}{damage}")


def rm(client, args) -> None:
    if args.entry:
        result = client.forget(args.memory, args.entry)
        print(f"forgot {result.forgotten} entries; {args.memory} rebuilt at step {result.memory.step}")
    else:
        client.delete(args.memory)
        print(f"deleted {args.memory}")


def export(client, args) -> None:
    client.export(args.memory, args.file)
    print(f"exported {args.memory} to {args.file}")


def import_(client, args) -> None:
    info = client.import_memory(args.file, args.memory)
    print(f"imported {info.memory_id}: step {info.step}, {info.entries} entries")
