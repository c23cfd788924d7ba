"""`ndn-edge provision`: give a board its identity over USB and get it answering through the gateway.

    ndn-edge provision --port /dev/ttyUSB0 --name kitchen/th1 --wifi MyWiFi --app examples/thermostat.py

Steps, each printed: connect; build the runtime and app for the board; deploy them (tools/deploy.py); create a
fresh 32-byte key; write `ndn_config.json` on the board (name, key, interface, group, port, unicast-fallback
gateway, Wi-Fi); record the device and key in the home's store; reset the board; wait until the gateway reports
it online, echoing what the board prints meanwhile.

Decisions:
- Network settings default to what the home's running gateway recorded (`gateway.json`: interface, group,
  port, site), so a board joins the gateway it was provisioned for; `--iface`/`--group`/`--site` override.
  A board on the unix port (a vboard, on this host) joins on that interface; a real board on "0.0.0.0" (its
  only one, Wi-Fi) and gets `gateway` = the gateway's interface address and port for the unicast fallback.
- The key is written to the board and to the store only after the files are deployed, config first, store
  right after: a run cut short earlier changes nothing anyone relies on, and running it again repairs it.
- Re-provisioning a known name replaces its key, which cuts off the board that holds the old one: asked on a
  terminal, `--yes` in scripts, a one-line error otherwise.
- Secrets (key, Wi-Fi password) are never printed. The Wi-Fi password comes from a prompt or from a file that
  only its owner can read (0600), never from the command line (shell history, `ps`).
- Waiting for the join reads the store the gateway keeps presence in (no client identity needed); a traceback
  printed by the board ends the wait at once with the board's error (and the file and line it names), and so does
  the board's REPL banner, which means the app ended without serving a Device.
- A join that fails rolls back a new name: its store record, and the board's `ndn_config.json` and replay state,
  so no device is left "unknown" for good. A known name given a new key keeps it (board and store agree), so
  deploying a fixed app is enough.
- Ctrl-C or SIGTERM while the board is in its raw REPL: the board's command is stopped and the board reset (it
  runs its main.py again), and one line says what was done, what was recorded and how to finish.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ndn_edge.tools.errors import CommandError, UsageError
from ndn_edge.tools.netargs import group_arg, iface_arg, site_arg
from ndn_edge.wire.protocol import DEFAULT_GROUP, DEFAULT_IFACE, DEFAULT_PORT, KEY_BYTES

if TYPE_CHECKING:
    from ndn_edge.state.home import GatewayRecord
    from ndn_edge.tools.cli import State
    from ndn_edge.tools.repl import Board

DEFAULT_WAIT_S = 30.0
ANY_IFACE = "0.0.0.0"
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TRACE_LINE = re.compile(r'File "([^"]*)", line (\d+)')
_REPL_BANNER = 'Type "help()" for more information.'  # what a board prints when main.py has ended
_POLL_S = 0.1
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def args_provision(parser: argparse.ArgumentParser) -> None:
    from ndn_edge.tools.cmd_deploy import add_port_args

    add_port_args(parser)
    parser.add_argument("--name", metavar="NAME", required=True,
                        help="device name under the site, e.g. kitchen/th1 (becomes /SITE/kitchen/th1)")
    parser.add_argument("--app", metavar="FILE", default=None,
                        help="the board app (default: ./main.py if it exists), e.g. examples/thermostat.py")
    parser.add_argument("--wifi", metavar="SSID", default=None, help="Wi-Fi network the board joins")
    parser.add_argument("--wifi-password-file", metavar="FILE", default=None,
                        help="file (mode 0600) whose first line is the Wi-Fi password; else you are asked")
    parser.add_argument("--iface", metavar="ADDR", type=iface_arg, default=None,
                        help=f"the gateway's interface address (default: the home's gateway's, else {DEFAULT_IFACE})")
    parser.add_argument("--group", metavar="ADDR:PORT", type=group_arg, default=None,
                        help="multicast group and port (default: the home's gateway's, else "
                             f"{DEFAULT_GROUP}:{DEFAULT_PORT})")
    parser.add_argument("--site", metavar="NAME", type=site_arg, default=None,
                        help="site name (default: the home's gateway's, else edge)")
    parser.add_argument("--yes", action="store_true", help="replace the key of an already provisioned name "
                                                           "without asking")
    parser.add_argument("--wait", metavar="S", type=_wait_s, default=DEFAULT_WAIT_S,
                        help=f"how long to wait for the gateway to see the board (default {DEFAULT_WAIT_S:g} s; "
                             "0: do not wait)")


def do_provision(state: State, args: argparse.Namespace) -> int:
    """Provision a board: identity, files, store, reset, join."""
    from ndn_edge.state.store import key_id
    from ndn_edge.tools.deploy import CONFIG_FILE, build, prune_replay_state, resolve_app, run_deploy

    verb = "provision"
    record = _gateway_record(state)
    site = _site(state, args.site, record)
    try:
        name = device_name(args.name, site)
    except ValueError as err:  # the site is known only now, so argparse could not check the name
        raise UsageError(f"{verb}: {err}") from None
    group, mcast_port = args.group or ((record.group, record.port_mcast) if record else
                                       (DEFAULT_GROUP, DEFAULT_PORT))
    iface = args.iface or (_address(record.iface) if record else DEFAULT_IFACE)
    wifi = _wifi(args)
    app = resolve_app(args.app, verb)
    existing = state.store.device(name)
    if existing is not None:
        _confirm_replace(name, existing.key_id, args.yes)

    from ndn_edge.tools.cmd_deploy import connect, interrupted

    board, info = connect(args, verb)
    doing = "deploying the runtime and the app"
    recorded = False
    try:
        bundle = build(info, app, verb)
        run_deploy(board, info, bundle, verb=verb)
        key = secrets.token_bytes(KEY_BYTES)
        config: dict[str, Any] = {"name": name, "key": key.hex(), "iface": iface if info.is_unix_port else ANY_IFACE,
                                  "group": group, "port": mcast_port, "state_dir": "."}
        if not info.is_unix_port:
            config["gateway"] = f"{iface}:{mcast_port}"
        if wifi is not None:
            config["wifi"] = wifi
        doing = f"writing {CONFIG_FILE}"
        board.write_file(CONFIG_FILE, (json.dumps(config, indent=1) + "\n").encode())
        print(f"{verb}: {CONFIG_FILE} written: {name}, new key (key-id {key_id(key)}), joins {group}:{mcast_port} "
              f"via {config['iface']}" + (f", unicast fallback {config['gateway']}" if "gateway" in config else "")
              + (f", Wi-Fi {wifi['ssid']!r}" if wifi else ""), flush=True)
        if wifi is not None and not info.network:
            print(f"{verb}: note: the board has no `network` module; the Wi-Fi settings are kept but unused")
        prune_replay_state(board, key_id(key), str(config["state_dir"]))
        doing = "recording the device"
        state.store.add_device(name, key, site, replace=existing is not None)
        recorded = True
        print(f"{verb}: {name} recorded in {state.home.db_path}" + (" (its old key no longer works)"
                                                                     if existing is not None else ""), flush=True)
        has_app = app is not None or board.sha256(["main.py"])["main.py"] is not None
        since = time.time()
        doing = "resetting the board"
        board.reset()
        print(f"{verb}: reset: the board restarts and runs main.py", flush=True)
        doing = ""
        if not has_app:
            print(f"{verb}: no app on the board yet; deploy one with: ndn-edge deploy --port {args.port} --app FILE")
        elif args.wait > 0:
            try:
                _wait_join(state, board, name, since, args.wait, verb)
            except JoinFailed as failed:
                if existing is not None:  # the board and the store hold the new key: a deploy of a fixed app joins
                    raise CommandError(f"{failed}; the board and the store keep its new key, so deploying a fixed "
                                       f"app is enough: ndn-edge deploy --port {args.port} --app FILE") from None
                raise CommandError(f"{failed}; {_roll_back(state, board, name)}") from None
    except KeyboardInterrupt:
        if doing:
            after = (f"{name} is recorded with the new key the board holds; " if recorded else
                     "nothing was recorded; " if doing != f"writing {CONFIG_FILE}" else
                     "the board may hold a key the store does not know; ")
            interrupted(board, verb, doing, after + "run provision again to finish")
        else:
            print(f"ndn-edge: {verb}: interrupted while waiting for the gateway to see {name}; the board is "
                  f"provisioned and runs its app; see whether it joined with: {state.home.hint('ndn-edge devices')}",
                  file=sys.stderr, flush=True)
        raise
    finally:
        board.close()
    return 0


class JoinFailed(CommandError):
    """The board did not join the gateway after provisioning (its app failed, ended, or never announced)."""


def _roll_back(state: State, board: Board, name: str) -> str:
    """Undo a new device's provisioning (its store record, the board's config and replay state); what was done."""
    from ndn_edge.errors import UnknownDevice
    from ndn_edge.tools.deploy import CONFIG_FILE, SEQ_PREFIX
    from ndn_edge.tools.errors import ToolsError

    try:
        state.store.remove_device(name)
    except UnknownDevice:
        pass
    try:
        board.recover()  # stops the app
        board.remove([CONFIG_FILE, *[p for p, size in board.listdir([""]).items()
                                     if size is not None and p.startswith(SEQ_PREFIX)]])
        board.leave_raw()
        board_note = f"the board's {CONFIG_FILE} was removed and the board is at its REPL"
    except (ToolsError, OSError) as err:
        board_note = f"the board's {CONFIG_FILE} could not be removed ({err}); it holds a key nobody knows"
    return (f"rolled back: {name} is not in the store and {board_note}; fix the app and run provision again")


def device_name(text: str, site: str) -> str:
    """The full name /SITE/A/B for "A/B" (or for "/SITE/A/B"); ValueError saying what is allowed."""
    parts = list(text.strip().split("/"))
    if text.startswith("/"):
        parts = parts[1:]
        if parts and parts[0] == site:
            parts = parts[1:]
        else:
            raise ValueError(f"device name {text!r} is not under site /{site}; give it as a name under the "
                             "site, e.g. kitchen/th1")
    if not parts or not all(_COMPONENT.fullmatch(p) for p in parts):
        raise ValueError(f"invalid device name {text!r}: use components of letters, digits, '_', '.', '-' "
                         "separated by '/', not starting with '_' or '.', e.g. kitchen/th1")
    return "/" + "/".join([site, *parts])


def _gateway_record(state: State) -> GatewayRecord | None:
    from ndn_edge.errors import ConfigError

    try:
        return state.home.read_gateway_record()
    except ConfigError:
        return None


def _site(state: State, site: str | None, record: GatewayRecord | None) -> str:
    from ndn_edge.wire.protocol import DEFAULT_SITE

    if record is not None:
        if site is not None and site != record.site:
            raise CommandError(f"provision: the gateway of this home serves site /{record.site}, not /{site}; "
                               "omit --site, or use another --home")
        return record.site
    return site or state.store.get_meta("site") or DEFAULT_SITE


def _address(iface: str) -> str:
    """The gateway's interface as an address (it may be recorded as a name such as eth0)."""
    from ndn_edge.devices.face import interface_address

    return interface_address(iface)


def _wifi(args: argparse.Namespace) -> dict[str, str] | None:
    if args.wifi is None:
        if args.wifi_password_file:
            raise CommandError("provision: --wifi-password-file needs --wifi SSID")
        return None
    if args.wifi_password_file:
        path = Path(args.wifi_password_file).expanduser()
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise CommandError(f"provision: cannot read the Wi-Fi password file {path}: {err.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode & 0o777
            if mode & 0o077:
                raise CommandError(f"provision: the Wi-Fi password file {path} is readable by others (mode "
                                   f"{mode:04o}); fix it with: chmod 600 {path}")
            lines = f.read().decode(errors="replace").splitlines()
        return {"ssid": args.wifi, "password": lines[0] if lines else ""}
    if not sys.stdin.isatty():
        raise CommandError("provision: --wifi needs the network's password: pass --wifi-password-file FILE "
                           "(mode 0600), or run in a terminal to be asked")
    return {"ssid": args.wifi, "password": getpass.getpass(f"Wi-Fi password for {args.wifi!r}: ")}


def _confirm_replace(name: str, kid: str, yes: bool) -> None:
    if yes:
        return
    why = f"{name} is already provisioned (key-id {kid}); a new key cuts off the board that holds the old one"
    if not sys.stdin.isatty():
        raise CommandError(f"provision: {why}; pass --yes to replace it")
    try:
        answer = input(f"{why}. Replace its key? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError(f"provision: {name} left as it was")


def _wait_join(state: State, board: Board, name: str, since: float, timeout_s: float, verb: str) -> None:
    """Until the gateway reports `name` online after `since`, echoing the board's output; JoinFailed if the app
    fails (a traceback), ends (the board's REPL prompt) or is not seen in time."""
    from ndn_edge.tools.repl import FRIENDLY_PROMPT

    record = _gateway_record(state)
    hint = state.home.hint("ndn-edge gateway")
    if record is None or (record.host in _LOCAL_HOSTS and not record.pid_alive()):
        print(f"{verb}: no gateway is running for this home; start one with: {hint} (the board joins when it "
              "announces itself)")
        return
    store = state.store
    started = time.monotonic()
    deadline = started + timeout_s
    pending = b""
    output: list[str] = []
    while True:
        pending += board.read_output(_POLL_S)
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            output.append(line)
            print(f"  board | {line}", flush=True)
        if any(line.startswith("Traceback") for line in output):
            raise JoinFailed(f"{verb}: the app failed on the board: {_board_error(output)}; see its output with: "
                             f"mpremote connect {board.port} repl")
        if pending.endswith(FRIENDLY_PROMPT) or any(line.startswith(_REPL_BANNER) for line in output):
            raise JoinFailed(f"{verb}: the app ended without serving (the board is at its REPL): it must create a "
                             "Device and call dev.run(), as examples/thermostat.py does")
        rec = store.device(name)
        if rec is not None and rec.state == "online" and (rec.last_seen or 0) >= since - 1:
            services = len(rec.desc.get("services") or []) if isinstance(rec.desc, dict) else 0
            if services or time.monotonic() > deadline:
                described = f", {services} services" if services else ""
                print(f"{verb}: the gateway sees {name} online{described} after "
                      f"{time.monotonic() - started:.1f} s", flush=True)
                return
        if time.monotonic() > deadline:
            last = output[-1] if output else "nothing"
            raise JoinFailed(f"{verb}: the gateway did not see {name} within {timeout_s:g} s (the board last "
                             f"printed: {last}); check the gateway's interface and group (ndn-edge devices) "
                             f"and the board's output (mpremote connect {board.port} repl)")


def _board_error(output: list[str]) -> str:
    """The last line of the board's traceback, after the file and line it names (when it names one)."""
    error = next((line for line in reversed(output) if line and not line.startswith(" ")), "?")
    where = [m for m in (_TRACE_LINE.search(line) for line in output) if m]
    return f"{where[-1].group(1)}, line {where[-1].group(2)}: {error}" if where else error


def _wait_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"wait must be seconds from 0 to 3600, got {text!r}")
    return value
