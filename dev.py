#!/usr/bin/env python3
"""Quick-start driver: `python3 dev.py up` (the demo), `python3 dev.py test` (the suite), `python3 dev.py bench`,
and `python3 dev.py firmware unix --micropython SRC [--32bit] [--stock]` (a MicroPython unix port built from a
checkout or its source archive, with the runtime frozen in unless --stock; prints the interpreter's path).

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
EXTRAS = {"up": "test", "test": "test", "bench": "test,bench", "firmware": "test"}


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


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print("usage: python3 dev.py up [ARGS...] | test [PYTEST ARGS...] | bench [ARGS...] | "
              "firmware unix --micropython SRC [--32bit] [--stock]", file=sys.stderr)
        return 2
    job, rest = argv[0], argv[1:]
    ensure_env(EXTRAS[job])
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if job == "test":
        env["NDN_EDGE_REQUIRE_MICROPYTHON"] = "1"
        cmd = [str(BIN / "python"), "-m", "pytest", "-q", *rest]
    elif job == "bench":
        cmd = [str(BIN / "python"), "-m", "bench", *rest]
    elif job == "firmware":
        cmd = [str(BIN / "python"), "-m", "ndn_edge.tools.micropython", *rest]
    else:
        cmd = [str(BIN / "ndn-edge"), "up", *(rest or ["--once"])]
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
