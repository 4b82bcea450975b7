"""`memagent token`: print a bearer token from the server's tokens file, or add one.

Prints only the token on stdout, so `export MEMAGENT_TOKEN=$(memagent token)` works; what it
did goes to stderr. Run it where the server runs: it reads DATA_DIR/tokens.json (or --tokens).
A running server reads the tokens file when it starts and again on SIGHUP.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

from memagent.cli.serve import DEFAULT_DATA_DIR


def register(subparsers) -> None:
    p = subparsers.add_parser("token", help="print (or add) a bearer token from the server's tokens file",
                              description=__doc__)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the server's data dir")
    p.add_argument("--tokens", type=Path, help="the tokens file, if not DATA_DIR/tokens.json")
    p.add_argument("--tenant", default="default", help="whose token")
    p.add_argument("--new", action="store_true", help="add a new token for the tenant, even if it has one")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from memagent_server.auth import create_tokens, load_tokens

    from memagent.store import check_name

    path = args.tokens or args.data_dir / "tokens.json"
    try:
        check_name("tenant", args.tenant)
        if not path.exists():
            tokens = create_tokens(path, args.tenant)
            print(f"created {path} with one token for tenant {args.tenant!r}", file=sys.stderr)
        else:
            tokens = load_tokens(path)
        held = [token for token, tenant in tokens.items() if tenant == args.tenant]
        if args.new or not held:
            held.append(secrets.token_urlsafe(32))
            _write_tokens(path, tokens | {held[-1]: args.tenant})
            print(f"added a token for tenant {args.tenant!r} to {path}; restart the server to use it", file=sys.stderr)
    except ValueError as err:  # a malformed file or tenant name: nothing was written
        print(f"memagent token: {err}", file=sys.stderr)
        return 2
    print(held[-1])
    return 0


def _write_tokens(path: Path, tokens: dict[str, str]) -> Path:
    """Replace the file in one step, readable by its owner only: a reader never sees half of it."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tokens-")
    with os.fdopen(fd, "w") as f:
        json.dump({"tokens": tokens}, f, indent=2)
    os.replace(temporary, path)
    return path
