"""The `ndn-edge` command line: one table of commands, one error handler.

Shape (after mpremote's main.py): `COMMANDS` maps each command ("client add" is a verb with a sub-verb) to
`(handler, argument builder, help)`. A handler is `do_<verb>(state, args)` returning None or an exit status; it is
given directly or as "module:function" (".cmd_x" for a module of this package), imported only when that command
runs, so `import ndn_edge.tools.cli` loads neither python-ndn, nor the store, nor pyserial. A handler of None
means "not available yet".

To plug in a command implemented elsewhere, replace its entry, e.g.:

    "call": (".cmd_call:do_call", _args_call, "call a device service"),

Errors: handlers raise `CommandError("verb: why")` for what the user can fix (`UsageError`, exit status 2, for a
mistake in what was typed that argparse could not check); names and patterns are checked by argument types
(`argtypes.checked`), so a bad one is an argparse usage error: one line, exit status 2. `main` catches, once, only
these: the tools' `ToolsError`s, the gateway's `GatewayError`s (each carries its `exit_code`: 2 for `ConfigError`,
3..9 for call errors, see gateway/errors.py), and an `OSError` in which the system refused something the user named
or controls (a path, a serial port, an address), printed as one line `ndn-edge: ...` on stderr. Anything else is a
bug: its traceback, then one line asking for a report, exit status 70 (`EXIT_BUG`, sysexits' EX_SOFTWARE, kept apart
from 1 so scripts can tell a bug from a failure). Rejected: catching every `ValueError` and `OSError` as a user
error, which turned bugs into one line with no traceback. Ctrl-C exits 130 without a traceback, and so does
SIGTERM: while a command runs it is turned into the same KeyboardInterrupt, so every command cleans up the same way
for both (commands running an event loop cancel their main task instead: `ndn_edge.tools.procs.cancel_on_sigterm`).
`State` owns what commands share (the home, a lazily opened store) and is closed in `finally`; a command that only
reads the home (`client list`, `acl list`, ...) opens it with `State.existing_store`, which never creates one, so a
mistyped `--home` is an error rather than a new empty home.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import secrets
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ndn_edge import __version__
from ndn_edge.errors import GatewayError, UnknownClient
from ndn_edge.state.home import Home, validate_client_name
from ndn_edge.tools.argtypes import checked
from ndn_edge.tools.errors import (
    EXIT_BUG,
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    CommandError,
    ToolsError,
    UsageError,
)
from ndn_edge.tools.output import print_json, print_table, time_text
from ndn_edge.wire.protocol import DEFAULT_SITE, KEY_BYTES

if TYPE_CHECKING:
    from ndn_edge.state.store import Store

PROG = "ndn-edge"
CLIENT_ADD_SITE_WAIT_S = 2.0
# The system refused something the user named or controls (a file, a serial port, an address or port, the
# network), as opposed to a call the code should never have made: one line, not a traceback.
_SYSTEM_REFUSED = frozenset({
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG,
    errno.ELOOP, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EBUSY, errno.EIO, errno.ENXIO, errno.ENODEV,
    errno.EPIPE, errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH,
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
})

Handler = Callable[["State", argparse.Namespace], int | None]
Builder = Callable[[argparse.ArgumentParser], None]
HandlerSpec = Handler | str | None


class State:
    """What every command shares: the home folder and, opened on first use, its store."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        """The home's store, created (with the home) on first use."""
        if self._store is None:
            self._store = self.home.open_store()
        return self._store

    def existing_store(self, verb: str) -> Store | None:
        """The home's store for a command that must not create a home: None if the home has no store yet;
        UsageError if the home folder itself does not exist (a mistyped --home, most likely)."""
        if self._store is not None:
            return self._store
        if not self.home.db_path.exists():
            if not self.home.path.is_dir():
                raise UsageError(f"{verb}: there is no home at {self.home.path} (nothing was created); check "
                                 f"--home or $NDN_EDGE_HOME, or start one with: "
                                 f"{self.home.hint(f'{PROG} client add NAME')}")
            return None
        return self.store

    def close(self) -> None:
        """Release what the command opened."""
        if self._store is not None:
            self._store.close()
            self._store = None


# -- client commands


def do_client_add(state: State, args: argparse.Namespace) -> None:
    """Issue a client identity: a random key in the store and a 0600 credentials file; print the file's path."""
    name = args.name
    home, store = state.home, state.store
    if store.client(name) is not None:
        raise CommandError(f"client add: client '{name}' already exists; remove it first with: "
                           f"{home.hint(f'{PROG} client remove {name}')}")
    path = home.client_file(name)
    if path.exists():
        raise CommandError(f"client add: {path} exists but no client '{name}' is in the store; delete it with: "
                           f"{home.hint(f'{PROG} client remove {name}')}")
    # A gateway started a moment ago may be about to decide the home's site: wait a little for it (only when
    # one of this home runs, and the site is not decided yet).
    wait_s = 0.0
    if args.site is None and store.site() is None:
        from ndn_edge.tools.procs import gateway_may_be_starting

        wait_s = CLIENT_ADD_SITE_WAIT_S if gateway_may_be_starting(home.path) else 0.0
    site = store.claim_site(args.site, wait_s=wait_s)
    key = secrets.token_bytes(KEY_BYTES)
    store.add_client(name, key)
    try:
        path = home.write_client(name, key, site)
    except BaseException:
        store.remove_client(name)
        raise
    if args.json:
        print_json({"name": name, "site": site, "credentials": str(path)})
    else:
        print(f"client {name} added for site /{site}, credentials in {path}; it may call nothing until: "
              f"{home.hint(f'{PROG} acl grant {name} PATTERN')}")


def do_client_list(state: State, args: argparse.Namespace) -> None:
    """List client identities with their rules."""
    store, home = state.existing_store("client list"), state.home
    patterns: dict[str, list[str]] = {}
    for rule in store.rules() if store is not None else ():
        patterns.setdefault(rule.client, []).append(rule.pattern)
    rows: list[dict[str, Any]] = []
    for client in store.list_clients() if store is not None else ():
        path = home.client_file(client.name)
        rows.append({"name": client.name, "created_at": client.created_at,
                     "rules": patterns.get(client.name, []), "credentials": str(path) if path.exists() else None})
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"no clients; add one with: {home.hint(f'{PROG} client add NAME')}", file=sys.stderr)
    else:
        print_table(("NAME", "CREATED", "RULES"),
                    [(str(r["name"]), time_text(float(r["created_at"])), " ".join(r["rules"]) or "-") for r in rows])


def do_client_remove(state: State, args: argparse.Namespace) -> None:
    """Forget a client: its key, its rules and its credentials file."""
    name = args.name
    store = state.existing_store("client remove")
    try:
        if store is None:
            raise UnknownClient(name)
        store.remove_client(name)
        known = True
    except UnknownClient:
        known = False
    removed_file = state.home.remove_client(name)
    if not known and not removed_file:
        raise CommandError(f"client remove: no client '{name}'; list clients with: "
                           f"{state.home.hint(f'{PROG} client list')}", exit_code=UnknownClient.exit_code)
    from ndn_edge.tools.session import clear_default_client

    was_default = clear_default_client(state.home, name)
    print(f"client {name} removed: its key, rules and credentials file"
          + (", and it is no longer the home's default client" if was_default else ""))


# -- access rules


def do_acl_grant(state: State, args: argparse.Namespace) -> None:
    """Let a client call names matching a pattern."""
    client, pattern = args.client, args.pattern
    try:
        added = state.store.grant(client, pattern)
    except UnknownClient:
        raise _no_client("acl grant", state, client) from None
    print(f"{client} may now call names matching {pattern}" if added else
          f"{client} already had the rule {pattern}; nothing changed")


def do_acl_revoke(state: State, args: argparse.Namespace) -> None:
    """Remove one rule of a client."""
    client, pattern = args.client, args.pattern
    store = state.existing_store("acl revoke")
    try:
        if store is None:
            raise UnknownClient(client)
        removed = store.revoke(client, pattern)
    except UnknownClient:
        raise _no_client("acl revoke", state, client) from None
    if not removed:
        raise CommandError(f"acl revoke: client '{client}' has no rule '{pattern}'; see its rules with: "
                           f"{state.home.hint(f'{PROG} acl list --client {client}')}",
                           exit_code=UnknownClient.exit_code)
    print(f"{client} no longer has the rule {pattern}")


def do_acl_list(state: State, args: argparse.Namespace) -> None:
    """List access rules, of one client or of all."""
    client = args.client
    store = state.existing_store("acl list")
    try:
        if store is None and client is not None:
            raise UnknownClient(client)
        rules = store.rules(client) if store is not None else []
    except UnknownClient:
        raise _no_client("acl list", state, client or "") from None
    if args.json:
        print_json([{"client": r.client, "pattern": r.pattern} for r in rules])
    elif not rules:
        print(f"no rules; add one with: {state.home.hint(f'{PROG} acl grant CLIENT PATTERN')}", file=sys.stderr)
    else:
        print_table(("CLIENT", "PATTERN"), [(r.client, r.pattern) for r in rules])


def _no_client(verb: str, state: State, client: str) -> CommandError:
    return CommandError(f"{verb}: no client '{client}'; create it with: "
                        f"{state.home.hint(f'{PROG} client add {client}')}", exit_code=UnknownClient.exit_code)


# -- argument builders


def _args_none(parser: argparse.ArgumentParser) -> None:
    pass


def _args_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _args_client_add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", type=_client_name, help="client name: letters, digits, '_', '.', '-'")
    parser.add_argument("--site", type=_site_arg, default=None,
                        help=f"site the client talks to (default: the gateway's, else {DEFAULT_SITE})")
    parser.add_argument("--json", action="store_true",
                        help='print {"name", "site", "credentials"} (the credentials file\'s path) for scripts')


def _args_client_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", type=_client_name, help="client name")


def _args_acl_rule(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("client", metavar="CLIENT", type=_client_name, help="client name")
    parser.add_argument("pattern", metavar="PATTERN", type=_pattern,
                        help="name under the site; '*' is one component, '**' any number (e.g. 'kitchen/**')")


def _args_acl_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", metavar="NAME", type=_client_name, default=None, help="only this client's rules")
    _args_json(parser)


_client_name = checked(validate_client_name)


def _canonical_pattern(text: str) -> str:
    """A rule pattern in its canonical form; ValueError saying what is wrong with it."""
    from ndn_edge.names import format_pattern, parse_pattern

    return format_pattern(parse_pattern(text))


_pattern = checked(_canonical_pattern)


def _site_arg(text: str) -> str:
    site = text.strip("/")
    if not site or "/" in site:
        raise argparse.ArgumentTypeError(f"site must be one name component such as '{DEFAULT_SITE}', got {text!r}")
    return site


# -- the table

COMMANDS: dict[str, tuple[HandlerSpec, Builder | str, str]] = {
    "gateway": (".cmd_gateway:do_gateway", ".cmd_gateway:args_gateway",
                "run the gateway for a home (foreground, until Ctrl-C)"),
    "up": (".cmd_up:do_up", ".cmd_up:args_up",
           "run a gateway and simulated devices, and tour them with real calls (demo)"),
    "sim": (".cmd_sim:do_sim", ".cmd_sim:args_sim", "run simulated devices on MicroPython on this host"),
    "devices": (".cmd_client:do_devices", ".cmd_client:args_devices", "list the devices the gateway knows"),
    "services": (".cmd_client:do_services", ".cmd_client:args_services", "list the services of devices"),
    "call": (".cmd_client:do_call", ".cmd_client:args_call", "call a device service"),
    "ops": (".cmd_patterns:do_ops", ".cmd_patterns:args_ops",
            "list long-running operations and queued calls; show, wait for or cancel one"),
    "sub": (".cmd_patterns:do_sub", ".cmd_patterns:args_sub", "print messages published on matching topics"),
    "logs": (".cmd_logs:do_logs", ".cmd_logs:args_logs", "print the devices' log entries (-f follows)"),
    "client add": (do_client_add, _args_client_add, "issue a client identity and write its credentials file"),
    "client list": (do_client_list, _args_json, "list client identities"),
    "client remove": (do_client_remove, _args_client_name,
                      "remove a client, its rules, its durable subscriptions, its tokens and its credentials"),
    "client token": (".cmd_token:do_token", ".cmd_token:args_token",
                     "issue a bearer token for the HTTP API (--revoke, --list)"),
    "acl grant": (do_acl_grant, _args_acl_rule, "let a client call names matching a pattern"),
    "acl revoke": (do_acl_revoke, _args_acl_rule, "remove a client's rule"),
    "acl list": (do_acl_list, _args_acl_list, "list access rules"),
    "provision": (".cmd_provision:do_provision", ".cmd_provision:args_provision",
                  "give a board its name, key and app over USB, and wait until the gateway sees it"),
    "deploy": (".cmd_deploy:do_deploy", ".cmd_deploy:args_deploy",
               "copy the runtime and an app to a board (only what changed)"),
    "flash": (".cmd_flash:do_flash", ".cmd_flash:args_flash", "write MicroPython firmware to a board"),
    "vboard": (".vboard:do_vboard", ".vboard:args_vboard",
               "run a virtual board (MicroPython behind a pseudo-terminal) for provision and deploy"),
    "federation init": (".cmd_federation:do_federation_init", ".cmd_federation:args_init",
                        "make a federation of gateways over NATS with this home's; print an enrolment token"),
    "federation join": (".cmd_federation:do_federation_join", ".cmd_federation:args_join",
                        "enrol this home in a federation (with the token `federation init` printed)"),
    "federation status": (".cmd_federation:do_federation_status", ".cmd_federation:args_status",
                          "show the federation: gateways, the devices they serve, NATS health"),
}

# Commands that never read or write a home: their help does not offer --home.
NO_HOME = frozenset({"flash", "deploy"})

GROUPS: dict[str, str] = {
    "client": "manage client identities (add, list, remove, token)",
    "acl": "manage access rules (grant, revoke, list)",
    "federation": "gateways sharing clients, rules and devices over NATS (init, join, status)",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (and exit status 2), like every other user mistake."""

    def error(self, message: str) -> NoReturn:
        command = self.prog[len(PROG):].strip()
        self.exit(2, f"{PROG}: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command in `COMMANDS`."""
    home_help = "data folder (default: $NDN_EDGE_HOME, else $XDG_DATA_HOME/ndn-edge or ~/.local/share/ndn-edge)"
    common = _Parser(add_help=False)
    # SUPPRESS: a sub-command's default must not overwrite a --home given before the verb.
    common.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS, help=home_help)
    parser = _Parser(prog=PROG, description="IoT edge services over signed NDN multicast.", epilog=EXIT_CODES_HELP,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", metavar="DIR", default=None, help=home_help)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    groups: dict[str, Any] = {}
    for command, (_, builder, help_text) in COMMANDS.items():
        words = command.split()
        if len(words) == 1:
            parents = [] if command in NO_HOME else [common]
            sub = verbs.add_parser(command, parents=parents, help=help_text, description=help_text)
        else:
            group = groups.get(words[0])
            if group is None:
                group_parser = verbs.add_parser(words[0], parents=[common], help=GROUPS[words[0]],
                                                description=GROUPS[words[0]])
                group = groups[words[0]] = group_parser.add_subparsers(dest="subverb", metavar="SUBCOMMAND",
                                                                       required=True)
            sub = group.add_parser(words[1], parents=[common], help=help_text, description=help_text)
        (_load(builder) if isinstance(builder, str) else builder)(sub)
        sub.set_defaults(command=command)
    return parser


def resolve_handler(command: str) -> Handler:
    """The handler of `command`, importing it if named as "module:function"."""
    spec = COMMANDS[command][0]
    if spec is None:
        raise CommandError(f"{command}: not available yet")
    return _load(spec) if isinstance(spec, str) else spec


def _load(spec: str) -> Any:
    """The object named "module:attribute", the module relative to this package when it starts with a dot
    (modules of commands stay light to import)."""
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name, package=__package__), attr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `ndn-edge` command; return the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error argparse already printed
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    command: str = args.command
    state: State | None = None
    restore = _sigterm_as_interrupt()
    try:
        handler = resolve_handler(command)
        state = State(Home.resolve(args.home))
        return handler(state, args) or 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except CommandError as err:
        return _fail(str(err), err.exit_code)
    except (ToolsError, GatewayError) as err:
        return _fail(f"{command}: {err}", err.exit_code)
    except OSError as err:
        if err.filename is None and err.errno not in _SYSTEM_REFUSED:
            return _bug(command, err)
        where = f": {err.filename}" if err.filename else ""
        return _fail(f"{command}: {err.strerror or err}{where}", EXIT_FAILURE)
    except Exception as err:  # a bug: keep its traceback
        return _bug(command, err)
    finally:
        try:
            if state is not None:
                state.close()
        finally:
            restore()


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM raise KeyboardInterrupt, as Ctrl-C does; returns what puts the previous handler back. Only in
    the main thread (the only one where Python may install signal handlers); elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return restore


# -- output


def _fail(message: str, exit_code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return exit_code


def _bug(command: str, err: BaseException) -> int:
    """An exception no command expects: its traceback, then one line asking for a report."""
    traceback.print_exc()
    return _fail(f"{command}: internal error ({type(err).__name__}), a bug in {PROG} {__version__}; please report "
                 "it with the traceback above", EXIT_BUG)
