"""`ndn-edge deploy`: copy the runtime and an app to a board over its serial port, only what changed.

    ndn-edge deploy --port /dev/ttyUSB0 --app examples/thermostat.py

Steps, each printed: connect (interrupting what runs, entering the raw REPL), read what the board is, build the
files for it (tools/deploy.py), compare hashes, check free space, copy what differs (verified), remove leftovers,
reset the board so it runs main.py. Also home of the serial-port options `provision` shares, and of what both do
when interrupted (Ctrl-C or SIGTERM) while talking to the board: stop the command on the board, reset it so it
runs its main.py again (with `--no-reset`, leave it at its REPL), and say in one line what state it is in and how
to finish, instead of leaving it silent in its raw REPL.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ndn_edge.tools.argtypes import bounded

if TYPE_CHECKING:
    from ndn_edge.tools.cli import State
    from ndn_edge.tools.repl import Board, BoardInfo


def add_port_args(parser: argparse.ArgumentParser) -> None:
    """--port, --baud and --connect-timeout, for commands that talk to a board."""
    from ndn_edge.tools.repl import CONNECT_TIMEOUT_S, DEFAULT_BAUD

    parser.add_argument("--port", metavar="PORT", required=True,
                        help="the board's serial port, e.g. /dev/ttyUSB0, /dev/ttyACM0 or a vboard's DIR/port")
    parser.add_argument("--baud", metavar="N", type=int, default=DEFAULT_BAUD,
                        help=f"serial speed (default {DEFAULT_BAUD}; USB boards ignore it)")
    parser.add_argument("--connect-timeout", metavar="S", type=_seconds, default=CONNECT_TIMEOUT_S,
                        help=f"how long to try reaching the board's REPL (default {CONNECT_TIMEOUT_S:g} s)")


def connect(args: argparse.Namespace, verb: str) -> tuple[Board, BoardInfo]:
    """Connect to the board named by the port options; returns it (in its raw REPL) and what it is."""
    from ndn_edge.tools.deploy import board_line, check_micropython
    from ndn_edge.tools.repl import Board

    print(f"{verb}: connecting to {args.port}", flush=True)
    board = Board.connect(args.port, baudrate=args.baud, connect_timeout_s=args.connect_timeout)
    try:
        info = board.info()
        check_micropython(info, args.port, verb)
    except BaseException:
        board.close()
        raise
    print(f"{verb}: board {board_line(info)}", flush=True)
    return board, info


def args_deploy(parser: argparse.ArgumentParser) -> None:
    add_port_args(parser)
    parser.add_argument("--app", metavar="FILE", default=None,
                        help="the board app, deployed as app.mpy started by main.py (default: ./main.py if it "
                             "exists, else only the runtime is deployed)")
    parser.add_argument("--no-reset", action="store_true", help="leave the board in its REPL instead of resetting")


def do_deploy(state: State, args: argparse.Namespace) -> int:
    """Deploy the runtime and the app; reset the board."""
    from ndn_edge.tools.deploy import CONFIG_FILE, board_key_id, build, prune_replay_state, resolve_app, run_deploy

    state.close()
    app = resolve_app(args.app, "deploy")
    board, info = connect(args, "deploy")
    try:
        bundle = build(info, app, "deploy")
        run_deploy(board, info, bundle)
        identity = board_key_id(board)
        if identity is None:
            print(f"deploy: note: the board has no {CONFIG_FILE}; give it an identity with: ndn-edge provision "
                  f"--port {args.port} --name NAME")
        else:
            prune_replay_state(board, *identity)
        if app is None:
            print("deploy: no app given (--app FILE) and no ./main.py: the board's app is unchanged")
        if not args.no_reset:
            board.reset()
            print("deploy: reset: the board restarts and runs main.py", flush=True)
    except KeyboardInterrupt:
        interrupted(board, "deploy", "copying files", "run deploy again to finish (it copies only what is missing)",
                    reset=not args.no_reset)
        raise
    finally:
        board.close()
    return 0


def interrupted(board: Board, verb: str, doing: str, then: str, *, reset: bool = True) -> None:
    """After Ctrl-C (or SIGTERM) while `doing`: stop the board's command and reset it (or leave it at its REPL),
    then say so in one line on stderr, ending with `then` (how to finish)."""
    from ndn_edge.tools.errors import ToolsError

    try:
        board.recover()
        if reset:
            board.reset()
            state = "the board was reset and runs its main.py"
        else:
            board.leave_raw()
            state = "the board is at its REPL"
    except (ToolsError, OSError):
        state = "the board did not answer and may still be in its raw REPL: press its reset button"
    except KeyboardInterrupt:  # interrupted again: give up on the board, still say where it was left
        state = "the board may still be in its raw REPL: press its reset button"
    print(f"ndn-edge: {verb}: interrupted while {doing}; {state}; {then}", file=sys.stderr, flush=True)


_seconds = bounded(float, 0, 3600, "timeout must be seconds from 0 to 3600", low_open=True)
