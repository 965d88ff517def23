"""python -m services.apikeys create --role trader --client client-C | revoke KEY_ID | list

The file is API_KEYS_FILE (relative paths from the repository root, as the services read it). create
prints the new key once, as `KEY_ID KEY` on the last line of its output; only its SHA-256 is stored.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import get_args

from services.apikeys.commands import UnknownKeyId, create, list_keys, revoke
from services.common.auth import ApiKeysError, Role, key_id
from services.common.env import REPO_ROOT, env_path
from services.ingest.validation import ID_PATTERN

USAGE_EXIT = 2
DEMO_FILE = REPO_ROOT / "config" / "demo_api_keys.toml"
_CLIENT_ID = re.compile(ID_PATTERN)  # a trader key for a client_id POST /orders refuses would be useless


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m services.apikeys",
        description="Manage the API keys in API_KEYS_FILE. Only each key's SHA-256 is stored; running "
                    "services pick a change up within 5 s.")
    commands = cli.add_subparsers(dest="command", required=True)
    new = commands.add_parser("create", help="add a new random key and print it once, as `KEY_ID KEY`")
    new.add_argument("--role", required=True, choices=get_args(Role))
    new.add_argument("--client", metavar="CLIENT_ID", help="the client a trader key acts for (trader keys only)")
    gone = commands.add_parser("revoke", help="remove a key: it stops working within 5 s")
    gone.add_argument("key_id", metavar="KEY_ID", help="the key's id, as create and list show it")
    commands.add_parser("list", help="every key's id, role and client (never the keys or their hashes)")
    return cli


def keys_file(cli: argparse.ArgumentParser, command: str) -> Path:
    if not os.environ.get("API_KEYS_FILE"):
        cli.error("set API_KEYS_FILE to the keys file the services read (the demo set is not edited here)")
    path = env_path("API_KEYS_FILE", "")
    if command != "list" and path.resolve() == DEMO_FILE.resolve():
        cli.error(f"{path} is the shipped demo set, which stays as it is: start a file of your own")
    return path


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    path = keys_file(cli, args.command)
    try:
        if args.command == "create":
            if args.role == "trader" and not args.client:
                cli.error("--client is required for a trader key")
            if args.role != "trader" and args.client is not None:
                cli.error(f"--client is for trader keys only: a {args.role} key acts for any client")
            if args.client is not None and not _CLIENT_ID.match(args.client):
                cli.error(f"--client {args.client!r} is not a client_id: 1 to 64 of A-Z a-z 0-9 . _ : -")
            made = create(path, args.role, args.client)
            whom = f" for {args.client}" if args.client else ""
            print(f"created a new {args.role} key{whom} in {path}; only its SHA-256 is stored, so keep the key "
                  "now: it is not shown again. Running services accept it within 5 s.", file=sys.stderr)
            print(f"{made.key_id} {made.key}")
        elif args.command == "revoke":
            spec = revoke(path, args.key_id)
            whom = f" for {spec.client_id}" if spec.client_id else ""
            print(f"revoked {key_id(spec.sha256)} ({spec.role} key{whom}) in {path}; running services refuse it "
                  "within 5 s and close its open sockets")
        else:
            specs = list_keys(path)
            print(f"{'KEY_ID':<16}  {'ROLE':<6}  CLIENT")
            for spec in specs:
                print(f"{key_id(spec.sha256):<16}  {spec.role:<6}  {spec.client_id or '-'}")
    except UnknownKeyId as exc:
        print(f"error: no key with id {exc.args[0]!r} in {path} (`list` shows the ids)", file=sys.stderr)
        return USAGE_EXIT
    except ApiKeysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    except OSError as exc:
        print(f"error: cannot change {path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
