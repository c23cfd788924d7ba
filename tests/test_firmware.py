"""Firmware with the runtime frozen in: what the freezer needs of the runtime, and the unix-port builds
(`python3 dev.py firmware unix`, ndn_edge.tools.micropython.build_unix) that CI runs the tests on."""
from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest

from bench.frames import float_constants
from ndn_edge.tools import micropython as mp
from tests.support import ROOT, find_mpy_cross


def test_no_runtime_module_holds_a_float_constant_the_freezer_cannot_write(tmp_path):
    # MicroPython's freezer writes every float constant into C as its repr: `inf` and `nan` are not C, and a
    # firmware with the runtime frozen in then fails to build (`1e999` in device/cbor.py did that).
    mpy_cross = find_mpy_cross()
    if mpy_cross is None:
        pytest.skip("mpy-cross not installed")
    for src in mp.runtime_sources():
        out = tmp_path / f"{src.stem}.mpy"
        mp.compile_module(mpy_cross, src, out, f"device/{src.name}")
        for text in float_constants(out.read_bytes()):
            assert math.isfinite(float(text)), f"device/{src.name}: float constant {text}"


def _frozen_device(micropython: str, cwd: Path) -> str:
    """Where `device` comes from with only the interpreter's frozen modules on the path ("" if nowhere)."""
    from ndn_edge.tools.repl import SOURCE_OF_SNIPPET
    done = subprocess.run([micropython, "-c", SOURCE_OF_SNIPPET + "print(_src('device'))"], capture_output=True,
                          text=True, timeout=30, env=dict(os.environ, MICROPYPATH=".frozen"), cwd=cwd)
    return done.stdout.strip()


def test_the_tests_run_the_runtime_the_interpreter_carries_frozen_in(micropython, run_mp, tmp_path):
    # On an interpreter built with firmware/unix/manifest.py (CI's 32-bit run) every MicroPython test runs the
    # frozen runtime, as a board with that firmware would; on a stock one, the .mpy copy.
    frozen = _frozen_device(micropython, tmp_path).startswith(".frozen")
    where = run_mp("import device\nprint(device.__file__)").strip()
    if frozen:
        code = "try:\n import device._cpython\n print('carried')\nexcept ImportError:\n print('absent')"
        done = subprocess.run([micropython, "-c", code], capture_output=True, text=True, timeout=30,
                              env=dict(os.environ, MICROPYPATH=".frozen"), cwd=tmp_path)
        assert done.stdout.strip() == "absent", "the firmware carries the host-only device/_cpython.py"
        assert where == "device/__init__.py"  # a frozen module's file is its source name
    else:
        assert where.endswith("/device/__init__.mpy")


def test_a_build_is_cached_by_its_inputs(tmp_path, monkeypatch):
    # A warm CI run costs nothing: the same archive, word size and frozen sources find the built interpreter.
    monkeypatch.setenv(mp.CACHE_ENV, str(tmp_path / "cache"))
    archive = tmp_path / "micropython-test.tar.gz"
    archive.write_bytes(b"not really an archive")
    keys = {(bits, frozen): mp.unix_build_key(archive, bits=bits, frozen=frozen)
            for bits in (32, 64) for frozen in (True, False)}
    assert len(set(keys.values())) == 4
    prog = tmp_path / "cache" / "unix" / keys[32, True] / "micropython"
    prog.parent.mkdir(parents=True)
    prog.write_text("built before")
    assert mp.build_unix(archive, bits=32, frozen=True) == prog  # found, nothing unpacked or built
    assert not (tmp_path / "cache" / "src").exists()
    archive.write_bytes(b"another archive")
    assert mp.unix_build_key(archive, bits=32, frozen=True) != keys[32, True]


def test_the_compiled_runtime_is_cached_by_its_compiler_flags_and_sources(tmp_path, monkeypatch):
    # deploy, sim and up compile the runtime's 20 modules (0.8 s of CPU) once; then they copy them.
    mpy_cross = find_mpy_cross()
    assert mpy_cross is not None
    monkeypatch.setenv(mp.CACHE_ENV, str(tmp_path / "cache"))
    first = mp.compile_runtime(tmp_path / "a", mpy_cross)
    names = sorted(p.name for p in (first / "device").iterdir())
    assert names == sorted(f"{src.stem}.mpy" for src in mp.runtime_sources())

    def no_compiler(*args, **kw):
        raise AssertionError("compiled again")
    monkeypatch.setattr(mp, "compile_module", no_compiler)
    second = mp.compile_runtime(tmp_path / "b", mpy_cross)
    assert all((second / "device" / n).read_bytes() == (first / "device" / n).read_bytes() for n in names)
    with pytest.raises(AssertionError, match="compiled again"):  # other flags: another entry, compiled
        mp.compile_runtime(tmp_path / "c", mpy_cross, ("-march=armv6m",))
    assert not list((tmp_path / "cache" / "mpy").glob("*/compiling-*"))  # the failed one left nothing half-made
    monkeypatch.undo()  # the compiler back
    monkeypatch.setenv(mp.CACHE_ENV, "/proc/no-cache-here")  # no writable cache: compiled in place
    assert sorted(p.name for p in (mp.compile_runtime(tmp_path / "d", mpy_cross) / "device").iterdir()) == names


def test_a_build_says_what_is_wrong_with_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv(mp.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(mp.BuildFailed, match="does not exist"):
        mp.build_unix(tmp_path / "nowhere", bits=64)
    (tmp_path / "tree").mkdir()
    with pytest.raises(mp.BuildFailed, match="not a MicroPython source tree"):
        mp.build_unix(tmp_path / "tree", bits=64)
    with pytest.raises(mp.BuildFailed, match="bits must be 32 or 64"):
        mp.build_unix(tmp_path / "tree", bits=16)


# -- the ecosystem's install path: mip


def test_the_mip_package_is_the_compiled_runtime_of_the_current_sources():
    # device/package.json (micropython-lib's format) lists every runtime module compiled into device/mpy/; the
    # sources it was compiled from are recorded, so a change to device/ without `python3 dev.py firmware mip`
    # fails here.
    import hashlib
    import json

    from ndn_edge import __version__
    package = json.loads((ROOT / "device" / "package.json").read_text())
    names = [p.stem for p in mp.runtime_sources()]
    assert package["version"] == __version__ and package["deps"] == []
    assert package["urls"] == [[f"device/{n}.mpy", f"{mp.MIP_FOLDER}/{n}.mpy"] for n in names]
    stale = [src.name for src in mp.runtime_sources()
             if package["sources"].get(src.name) != hashlib.sha256(src.read_bytes()).hexdigest()]
    assert not stale, f"device/mpy/ was compiled from older {stale}: run `python3 dev.py firmware mip` and commit"
    for n in names:
        assert (ROOT / "device" / mp.MIP_FOLDER / f"{n}.mpy").read_bytes()[:2] == b"M\x06"  # .mpy v6: 1.20 on
    assert sorted(p.stem for p in (ROOT / "device" / mp.MIP_FOLDER).glob("*")) == sorted(names)


def test_mip_installs_a_runtime_that_serves_signed_calls(micropython, http_root, peer, tmp_path):
    # On the unix port, as on a board with Wi-Fi: mip.install() of the package URL puts the compiled runtime in
    # lib/device/; a board app imports it from there and answers signed calls.
    from tests.support import Board
    board_dir = tmp_path / "board"
    board_dir.mkdir()
    code = f"import mip\nmip.install({http_root + '/device/package.json'!r}, target='lib')"
    done = subprocess.run([micropython, "-c", code], capture_output=True, text=True, timeout=60, cwd=board_dir,
                          env=dict(os.environ, MICROPYPATH=".frozen"))
    assert done.returncode == 0 and "Done" in done.stdout, done.stdout + done.stderr
    installed = sorted(p.name for p in (board_dir / "lib" / "device").iterdir())
    assert installed == sorted(f"{p.stem}.mpy" for p in mp.runtime_sources())
    path = f"{board_dir / 'lib'}:.frozen"  # lib first: a frozen runtime must not stand in for the installed one
    where = subprocess.run([micropython, "-c", "import device; print(device.__file__)"], capture_output=True,
                           text=True, timeout=30, cwd=board_dir, env=dict(os.environ, MICROPYPATH=path))
    assert where.stdout.strip() == str(board_dir / "lib" / "device" / "__init__.mpy")
    board = Board(micropython, peer.port, tmp_path / "state", micropypath=path)
    board.start(peer)
    try:
        assert board.call(peer, "temperature").value == 21.5
        assert board.call(peer, "counter").value == 1
        assert board.call(peer, "echo", {"s": "mip"}).value == {"s": "mip"}
    finally:
        board.stop()
