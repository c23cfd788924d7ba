#!/usr/bin/env python3
"""Quick-start driver: `python3 dev.py up` (the demo) and `python3 dev.py test` (the suite); also
`python3 dev.py lint` (ruff and mypy), `python3 dev.py bench ...`, and `python3 dev.py firmware unix --micropython
SRC [--32bit] [--stock]` (a MicroPython unix port built from a checkout or its source archive, with the runtime
frozen in unless --stock; prints the interpreter's path) or `python3 dev.py firmware mip` (device/package.json).

Creates ./.venv on first use and installs the project with what each job needs; needs only
Python 3.10+ and the package index.

`up` runs `ndn-edge up --once` in its own demo home, `./.demo` in this checkout (never the default home, where a
gateway of yours may already run), with the devices on a multicast port that was free a moment ago (never the
default 56363: gateways on one group hear each other's devices, and two demos' /edge/sim/1 would answer for each
other). Options after `up` go to `ndn-edge up` and win (`--home DIR`, `--group ADDR:PORT`); `--once` is kept
whatever else is given, unless `--keep-running` asks for a demo that runs until Ctrl-C.

The job runs in place of this process (exec) on POSIX, so Ctrl-C and SIGTERM reach it directly and nothing is
left behind when this process is stopped; `lint` (two programs in a row) forwards them to its child and waits.
"""
import os
import signal
import socket
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
EXTRAS = {"up": "test", "test": "test", "bench": "test,bench", "lint": "test,lint", "firmware": "test"}
TYPECHECK = VENV / "typecheck"  # ndn_edge laid out as links to the repository's folders, for mypy
DEMO_HOME = ROOT / ".demo"  # `up`'s home (git ignores it)
DEMO_GROUP = "224.0.23.170"  # the default group, on a port of its own
KEEP_RUNNING = "--keep-running"  # dev.py's own option for `up`: no --once
# pytest-xdist workers for `test`. The suite mostly waits (devices, gateways and timers in other processes), so
# more workers than cores pay: measured on 2 cores, see README.md. NDN_EDGE_TEST_WORKERS overrides (0: serial);
# so does -n or -p no:xdist among the pytest arguments.
TEST_WORKERS = "4"


def ensure_env(extras: str) -> None:
    stamp = VENV / f".installed-{extras.replace(',', '-')}"
    if stamp.exists() and stamp.stat().st_mtime >= (ROOT / "pyproject.toml").stat().st_mtime:
        return
    if not (BIN / "python").exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(f"dev.py: installing ndn-edge[{extras}] into {VENV}", flush=True)
    subprocess.run([str(BIN / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-e", f".[{extras}]"], cwd=ROOT, check=True)
    stamp.touch()


def parallel_args(pytest_args: list[str]) -> list[str]:
    """xdist options for the suite, unless the caller chose (`-n N`, `-p no:xdist`, NDN_EDGE_TEST_WORKERS=0)."""
    workers = os.environ.get("NDN_EDGE_TEST_WORKERS", TEST_WORKERS)
    chosen = any(a.startswith(("-n", "--numprocesses", "--dist")) or a.endswith("no:xdist") for a in pytest_args)
    if chosen or workers in ("", "0"):
        return []
    # worksteal: an idle worker takes tests queued on a busy one, so a few long tests do not end the run alone
    return ["-n", workers, "--dist", "worksteal"]


def typecheck_tree() -> Path:
    """TYPECHECK/ndn_edge: links to gateway/'s entries, tools/ and the data folders, as the wheel lays them out
    (pyproject.toml package-dir); mypy follows no import hook, so it cannot see the editable mapping."""
    import shutil

    package = TYPECHECK / "ndn_edge"
    shutil.rmtree(TYPECHECK, ignore_errors=True)
    package.mkdir(parents=True)
    for entry in (ROOT / "gateway").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in ("tools", "device", "firmware", "examples"):
        (package / name).symlink_to(ROOT / name)
    return TYPECHECK


def lint(env: dict[str, str]) -> int:
    """ruff over the repository, then mypy over the ndn_edge package; non-zero if either finds something."""
    ruff = run_child([str(BIN / "ruff"), "check", "."], ROOT, env)
    tree = typecheck_tree()
    mypy = run_child([str(BIN / "mypy"), "--config-file", str(ROOT / "pyproject.toml"), "-p", "ndn_edge"],
                     tree, dict(env, MYPYPATH=str(tree)))
    return ruff or mypy


def up_args(rest: list[str]) -> list[str]:
    """The arguments of `ndn-edge up` for `dev.py up REST`: the demo home, a free port for its group and --once,
    each unless REST gives its own (`--keep-running` drops --once)."""
    args = [a for a in rest if a != KEEP_RUNNING]

    def given(option: str) -> bool:
        return any(a == option or a.startswith(option + "=") for a in args)

    if not given("--home"):
        args = ["--home", str(DEMO_HOME), *args]
    if not given("--group"):
        args += ["--group", f"{DEMO_GROUP}:{free_udp_port()}"]
    if KEEP_RUNNING not in rest and not given("--once"):
        args.append("--once")
    return args


def free_udp_port() -> int:
    """A UDP port nothing on this host has bound (the OS picks it among its free ones)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def run_child(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run `cmd` to its end; SIGINT and SIGTERM sent to this process are passed on to it and waited for."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env)

    def forward(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def replace_with(cmd: list[str], env: dict[str, str]) -> int:
    """Become `cmd` (exec) where the OS can, so signals reach it as they would reach this process; else run it."""
    os.chdir(ROOT)
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)
    return run_child(cmd, ROOT, env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print("usage: python3 dev.py up [--keep-running] [ARGS...] | test [PYTEST ARGS...] | lint | bench [ARGS...] | "
              "firmware unix --micropython SRC [--32bit] [--stock] | firmware mip", file=sys.stderr)
        return 2
    job, rest = argv[0], argv[1:]
    ensure_env(EXTRAS[job])
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if job == "test":
        env["NDN_EDGE_REQUIRE_MICROPYTHON"] = "1"
        # The suite starts hundreds of gateways and commands: each would compile ndn_edge's sources (and pytest
        # rewrite the tests in every worker) again where the environment forbids bytecode caches (git ignores them).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        cmd = [str(BIN / "python"), "-m", "pytest", "-q", *parallel_args(rest), *rest]
    elif job == "bench":
        cmd = [str(BIN / "python"), "-m", "bench", *rest]
    elif job == "firmware":
        cmd = [str(BIN / "python"), "-m", "ndn_edge.tools.micropython", *rest]
    elif job == "lint":
        return lint(env)
    else:
        cmd = [str(BIN / "ndn-edge"), "up", *up_args(rest)]
    return replace_with(cmd, env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
