#!/usr/bin/env python3
"""Quick-start driver: `python3 dev.py up` (the demo) and `python3 dev.py test` (the suite); also
`python3 dev.py lint` (ruff and mypy), `python3 dev.py bench ...`, and `python3 dev.py firmware unix --micropython
SRC [--32bit] [--stock]` (a MicroPython unix port built from a checkout or its source archive, with the runtime
frozen in unless --stock; prints the interpreter's path) or `python3 dev.py firmware mip` (device/package.json).

Creates ./.venv on first use and installs the project with what each job needs; needs only
Python 3.10+ and the package index.
"""
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
EXTRAS = {"up": "test", "test": "test", "bench": "test,bench", "lint": "test,lint", "firmware": "test"}
TYPECHECK = VENV / "typecheck"  # ndn_edge laid out as links to the repository's folders, for mypy
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
    return ["-n", workers]


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
    ruff = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, env=env).returncode
    tree = typecheck_tree()
    mypy = subprocess.run([str(BIN / "mypy"), "--config-file", str(ROOT / "pyproject.toml"), "-p", "ndn_edge"],
                          cwd=tree, env=dict(env, MYPYPATH=str(tree))).returncode
    return ruff or mypy


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print("usage: python3 dev.py up [ARGS...] | test [PYTEST ARGS...] | lint | bench [ARGS...] | "
              "firmware unix --micropython SRC [--32bit] [--stock] | firmware mip", file=sys.stderr)
        return 2
    job, rest = argv[0], argv[1:]
    ensure_env(EXTRAS[job])
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if job == "test":
        env["NDN_EDGE_REQUIRE_MICROPYTHON"] = "1"
        cmd = [str(BIN / "python"), "-m", "pytest", "-q", *parallel_args(rest), *rest]
    elif job == "bench":
        cmd = [str(BIN / "python"), "-m", "bench", *rest]
    elif job == "firmware":
        cmd = [str(BIN / "python"), "-m", "ndn_edge.tools.micropython", *rest]
    elif job == "lint":
        return lint(env)
    else:
        cmd = [str(BIN / "ndn-edge"), "up", *(rest or ["--once"])]
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
