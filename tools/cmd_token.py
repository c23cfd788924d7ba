"""`ndn-edge client token NAME`: issue a bearer token for the HTTP API, bound to an existing client identity
(its access rules apply); `--revoke` revokes every token of the client, `--list` shows them (ids only).

The token is printed once on stdout and never again: only its hash is stored (`ndn_edge.http.tokens`). Removing
the client (`ndn-edge client remove NAME`) removes its tokens too.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ndn_edge.tools.errors import CommandError
from ndn_edge.tools.output import print_json, print_table, time_text

if TYPE_CHECKING:
    from ndn_edge.tools.cli import State


def args_token(parser: argparse.ArgumentParser) -> None:
    from ndn_edge.tools.cli import _client_name

    parser.add_argument("name", metavar="NAME", type=_client_name, help="the client the token acts as")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--revoke", action="store_true", help="revoke every token of the client")
    what.add_argument("--list", action="store_true", help="list the client's tokens (ids and dates, not secrets)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def do_token(state: State, args: argparse.Namespace) -> None:
    """Issue, revoke or list a client's HTTP API tokens."""
    from ndn_edge.errors import UnknownClient
    from ndn_edge.http import tokens
    from ndn_edge.http.server import read_record

    store, home, name = state.store, state.home, args.name
    if store.client(name) is None:
        raise CommandError(f"client token: no client '{name}'; create it with: "
                           f"{home.hint(f'ndn-edge client add {name}')}", exit_code=UnknownClient.exit_code)
    if args.revoke:
        count = tokens.revoke(store, name)
        if args.json:
            print_json({"client": name, "revoked": count})
        else:
            print(f"revoked {count} token{'s' if count != 1 else ''} of client '{name}' (within a second on a "
                  "running gateway)", file=sys.stderr)
        return
    if args.list:
        rows = tokens.listing(store, name)
        if args.json:
            print_json(rows)
        elif not rows:
            print(f"client '{name}' has no tokens; issue one with: {home.hint(f'ndn-edge client token {name}')}",
                  file=sys.stderr)
        else:
            print_table(("ID", "CLIENT", "CREATED"), [(r["id"], r["client"], time_text(r["created_at"]))
                                                      for r in rows])
        return
    token = tokens.issue(store, name)
    url = read_record(home.path)
    if args.json:
        print_json({"client": name, "id": tokens.token_id(token), "token": token, "url": url})
        return
    print(token)
    where = f"; the dashboard is at {url}/" if url else " (start the gateway with --http HOST:PORT to use it)"
    print(f"a token for client '{name}', shown once: send it as `Authorization: Bearer <token>`{where}",
          file=sys.stderr)
