"""Boards without hardware: the virtual board, the serial transport, provision/deploy end to end, flash's checks.

Real processes throughout: `python -m tools vboard` (a pty served by the real MicroPython unix port),
`python -m tools gateway` on its own multicast port on 127.0.0.1, `python -m tools provision|deploy`, and
clients through `ndn_edge.client.api`. Fake boards for bad inputs are ptys served by a thread in this process (silent,
echoing garbage, or speaking the raw REPL's handshake and then garbage). Every wait has a deadline; nothing
sleeps in place of a condition. What needs hardware (esptool talking to a chip, an RPI-RP2 drive) is covered up
to the command it would run and the file checks before it.
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ndn_edge.client.api import Client
from ndn_edge.errors import ConfigError
from ndn_edge.state.home import Home
from ndn_edge.state.store import Store, key_id
from ndn_edge.tools import cmd_flash
from ndn_edge.tools import micropython as mp
from ndn_edge.tools.cli import main as cli_main
from ndn_edge.tools.cmd_provision import device_name
from ndn_edge.tools.repl import RAW_PROMPT, SOURCE_OF_SNIPPET, TEMP_SUFFIX, BoardInfo, RemoteError, remote_exception
from tests.support import stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent
GROUP = "224.0.23.170"
THERMOSTAT = ROOT / "examples" / "thermostat.py"


# -- harness


def env_for(micropython: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MICROPYTHON=micropython)
    env.pop("NDN_EDGE_CLIENT", None)
    return env


def cli(home: Path, *args: str) -> tuple[int, str, str]:
    """`ndn-edge --home HOME ARGS...` in this process (stdin is not a terminal): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["--home", str(home), *args])
    return code, out.getvalue(), err.getvalue()


def tool(env: dict[str, str], home: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """`python -m tools --home HOME ARGS...` as a process."""
    return subprocess.run([sys.executable, "-m", "ndn_edge.tools", "--home", str(home), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ndn-edge: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class VBoard:
    """`ndn-edge vboard --dir FOLDER` as a process; `port` is its stable link."""

    def __init__(self, folder: Path, env: dict[str, str], *extra: str) -> None:
        self.folder = folder
        self.log_path = folder.parent / f"{folder.name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ndn_edge.tools", "vboard", "--dir", str(folder),
                                          *extra],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, 20, what="the vboard's port link")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"vboard exited with {self.proc.returncode}:\n{self.log()}")
        return os.path.islink(self.port) and os.readlink(self.port).startswith("/dev/pts/")

    @property
    def port(self) -> str:
        return str(self.folder / "port")

    @property
    def flash(self) -> Path:
        return self.folder / "flash"

    def press_reset(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def env(micropython):
    return env_for(micropython)


@pytest.fixture
def vboards(tmp_path, env):
    """Start vboards: `vboards(name, *args)`; all stopped at the end."""
    started: list[VBoard] = []

    def start(name: str = "vb", *extra: str, files: dict[str, str] | None = None) -> VBoard:
        folder = tmp_path / name
        (folder / "flash").mkdir(parents=True, exist_ok=True)
        for path, text in (files or {}).items():
            (folder / "flash" / path).write_text(text)
        board = VBoard(folder, env, *extra)
        started.append(board)
        return board

    yield start
    for board in started:
        board.stop()


class Gateway:
    """`ndn-edge gateway` for a home, on its own multicast port."""

    def __init__(self, home: Path, port: int, env: dict[str, str], log: Path) -> None:
        self.home = home
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "ndn_edge.tools", "--home", str(home), "gateway",
                                          "--group",
                                          f"{GROUP}:{port}"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.log = log

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited:\n{log.read_text()}")
            try:
                return Home(home).read_gateway_record().pid == self.proc.pid
            except ConfigError:
                return False
        wait_until(ready, 20, what="the gateway's record")


@pytest.fixture
def gateway(tmp_path, mcast_port, env):
    gw = Gateway(tmp_path / "home", mcast_port, env, tmp_path / "gateway.log")
    yield gw
    stop_process(gw.proc)


def serial_port(path: str):
    import serial

    return serial.Serial(path, 115200, timeout=0.05)


def read_until(ser, ending: bytes, timeout_s: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(ending):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {ending!r}; got {data[-300:]!r}")
        data += ser.read(ser.in_waiting or 1)
    return data


def wait_online(home: Path, name: str, since: float, timeout_s: float = 20) -> None:
    def online() -> bool:
        with Store(Home(home).db_path) as store:
            rec = store.device(name)
        return rec is not None and rec.state == "online" and (rec.last_seen or 0) >= since
    wait_until(online, timeout_s, interval_s=0.05, what=f"{name} online")


# -- the virtual board speaks MicroPython's REPL


def test_vboard_speaks_the_repl_protocol(vboards):
    vb = vboards(files={"boot.py": "print('boot ran')\n", "main.py": "print('main ran')\n"})
    with serial_port(vb.port) as ser:
        ser.write(b"\r\x03")  # whatever state power-on left: a fresh prompt
        read_until(ser, b">>> ")
        ser.write(b"\x04")  # soft reset in the friendly REPL: boot.py, then main.py, then the banner
        data = read_until(ser, b"for more information.\r\n>>> ")
        assert b"MPY: soft reboot\r\nboot ran\r\nmain ran\r\nMicroPython v" in data
        ser.write(b"6 * 7\r")
        assert read_until(ser, b">>> ").endswith(b"6 * 7\r\n42\r\n>>> ")
        ser.write(b"while True:\r    pass\r\r")  # a compound statement, ended by an empty line
        read_until(ser, b"... \r\n")
        ser.write(b"\x03")  # interrupts the running loop
        assert b"KeyboardInterrupt: \r\n>>> " in read_until(ser, b">>> ")

        ser.write(b"\x01")
        read_until(ser, RAW_PROMPT)
        ser.write(b"x = 41\nprint('out')\nraise ValueError('bad')\x04")
        data = read_until(ser, b"\x04>")
        assert data.startswith(b"OKout\r\n\x04Traceback (most recent call last):\r\n")
        assert data.endswith(b"ValueError: bad\r\n\x04>") and b"vboard_agent" not in data
        ser.write(b"print(x + 1)\x04")  # globals persist between commands, as on a board
        assert read_until(ser, b"\x04>") == b"OK42\r\n\x04\x04>"

        ser.write(b"\x05A\x01")  # raw-paste: accepted with a flow-control window
        header = read_until(ser, b"\x01", 5)
        assert header[:2] == b"R\x01" and struct.unpack("<H", header[2:4])[0] > 0 and len(header) == 5
        ser.write(b"print('pasted', x)\x04")
        assert read_until(ser, b"\x04>") == b"\x04pasted 41\r\n\x04\x04>"

        ser.write(b"\x04")  # empty raw input: soft reset; boot.py runs, main.py does not, raw REPL again
        data = read_until(ser, RAW_PROMPT)
        assert data.startswith(b"OK\r\nMPY: soft reboot\r\nboot ran\r\n") and b"main ran" not in data
        ser.write(b"print('x' in globals())\x04")  # a fresh interpreter
        assert read_until(ser, b"\x04>") == b"OKFalse\r\n\x04\x04>"
        ser.write(b"\x02")
        assert read_until(ser, b">>> ").startswith(b"\r\nMicroPython v")
    assert "soft reset" in vb.log()


def test_mpremote_drives_a_vboard(vboards, tmp_path):
    pytest.importorskip("mpremote", reason="mpremote is not installed (pip install mpremote)")
    vb = vboards()
    local = tmp_path / "hello.py"
    local.write_text("print('hello from a file')\n")
    mpremote = [sys.executable, "-m", "mpremote", "connect", vb.port]
    run = subprocess.run([*mpremote, "exec", "print(6 * 7)"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "42", run
    run = subprocess.run([*mpremote, "fs", "cp", str(local), ":hello.py", "+", "fs", "ls", "+", "run", str(local)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run
    assert "hello.py" in run.stdout and "hello from a file" in run.stdout
    assert (vb.flash / "hello.py").read_text() == local.read_text()
    # `ls` shows sizes as on a board (the unix port's ilistdir leaves them out; they all read 0 before issue 15)
    (vb.flash / "lib").mkdir()
    (vb.flash / "lib" / "big.bin").write_bytes(bytes(1234))
    run = subprocess.run([*mpremote, "fs", "ls", ":", "+", "fs", "ls", ":lib"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run
    sizes = {line.split()[1]: int(line.split()[0]) for line in run.stdout.splitlines()
             if len(line.split()) == 2 and line.split()[0].isdigit()}
    assert sizes == {"hello.py": len(local.read_bytes()), "lib/": 0, "big.bin": 1234}, run.stdout


def test_vboard_code_finds_the_heap_it_was_given(vboards, micropython, tmp_path):
    """Issue 15: `_health` said mem_free 4960 on a 96K vboard; the vboard's own agent took about 7 KiB of the
    heap the app was promised. Code on a vboard now finds the free heap of a bare interpreter with that heap."""
    probe = "import gc\ngc.collect()\nprint(gc.mem_free())"
    bare = subprocess.run([micropython, "-X", "heapsize=96K", "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    vb = vboards()
    with serial_port(vb.port) as ser:
        ser.write(b"\r\x03\x03\x01")
        read_until(ser, RAW_PROMPT)
        ser.write(probe.encode() + b"\x04")
        reply = read_until(ser, b"\x04>")
    free = int(reply.split(b"\x04")[0].removeprefix(b"OK").strip())
    assert abs(free - int(bare.stdout)) <= 1536, (free, bare.stdout)


def test_vboard_dir_that_is_a_file_is_one_clear_line(tmp_path, micropython, monkeypatch):
    """It said `File exists` (a bare errno)."""
    monkeypatch.setenv("MICROPYTHON", micropython)
    not_a_folder = tmp_path / "vb"
    not_a_folder.write_text("")
    code, out, err = cli(tmp_path / "home", "vboard", "--dir", str(not_a_folder))
    assert (code, out) == (2, "")
    one_error_line(err, f"vboard: --dir {not_a_folder} is a file, not a folder")
    assert not (tmp_path / "home").exists()


# -- provision, deploy, call: end to end


def test_provision_deploy_and_call_through_the_gateway(gateway, vboards, env, tmp_path):
    home = gateway.home
    for args in (("client", "add", "alice"), ("acl", "grant", "alice", "kitchen/**")):
        code, _, err = cli(home, *args)
        assert code == 0, err
    vb = vboards()
    app = tmp_path / "app" / "thermostat.py"
    app.parent.mkdir()
    app.write_text(THERMOSTAT.read_text())

    since = time.time()
    prov = tool(env, home, "provision", "--port", vb.port, "--name", "kitchen/th1", "--app", str(app),
                "--wait", "20")
    assert prov.returncode == 0, prov.stdout + prov.stderr + vb.log()
    assert "0 unchanged" in prov.stdout and "  copy    app.mpy" in prov.stdout
    assert "the gateway sees /edge/kitchen/th1 online, 3 services" in prov.stdout
    config = json.loads((vb.flash / "ndn_config.json").read_text())
    with Store(Home(home).db_path) as store:
        record = store.device("/edge/kitchen/th1")
    assert record is not None and record.key.hex() == config["key"] and record.last_seen >= since
    assert config["key"] not in prov.stdout + prov.stderr  # secrets never printed
    assert (config["iface"], config["port"], "gateway" in config) == ("127.0.0.1", gateway_port(home), False)
    assert os.stat(vb.folder).st_mode & 0o077 == 0  # the board's flash (it holds the key) is private

    with Client.connect_sync(home=home, client="alice", timeout=10) as alice:
        assert [d["name"] for d in alice.devices()] == ["/edge/kitchen/th1"]
        assert isinstance(alice.call("kitchen/th1/temperature"), float)
        assert alice.call("kitchen/th1/setpoint") == 21.0
        assert alice.call("kitchen/th1/humidity_avg", {"samples": 2}) == 40.5

        again = tool(env, home, "deploy", "--port", vb.port, "--app", str(app))
        assert again.returncode == 0, again.stderr
        assert "deploy: 0 copied" in again.stdout and "  copy " not in again.stdout

        app.write_text(THERMOSTAT.read_text().replace('{"setpoint": 21.0}', '{"setpoint": 19.5}'))
        since = time.time()
        changed = tool(env, home, "deploy", "--port", vb.port, "--app", str(app))
        assert changed.returncode == 0, changed.stderr
        assert "deploy: 1 copied" in changed.stdout
        assert [line.split()[1] for line in changed.stdout.splitlines() if line.startswith("  copy ")] == ["app.mpy"]
        wait_online(home, "/edge/kitchen/th1", since)
        assert alice.call("kitchen/th1/setpoint") == 19.5  # the new app runs

    code, _out, err = cli(home, "provision", "--port", vb.port, "--name", "kitchen/th1")
    assert code == 1
    one_error_line(err, "already provisioned", "--yes")
    assert json.loads((vb.flash / "ndn_config.json").read_text())["key"] == config["key"]  # board untouched


def gateway_port(home: Path) -> int:
    return Home(home).read_gateway_record().port_mcast


def test_reprovision_with_yes_installs_a_new_key_and_wifi(gateway, vboards, env, tmp_path):
    home = gateway.home
    cli(home, "client", "add", "alice")
    cli(home, "acl", "grant", "alice", "lab/**")
    vb = vboards()
    first = tool(env, home, "provision", "--port", vb.port, "--name", "lab/t1", "--app", str(THERMOSTAT))
    assert first.returncode == 0, first.stdout + first.stderr
    old_key = json.loads((vb.flash / "ndn_config.json").read_text())["key"]
    secret = tmp_path / "wifi.txt"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    code, _, err = cli(home, "provision", "--port", vb.port, "--name", "lab/t1", "--yes", "--wifi", "Home",
                       "--wifi-password-file", str(secret))
    assert code == 1
    one_error_line(err, "readable by others", "chmod 600")
    secret.chmod(0o600)
    again = tool(env, home, "provision", "--port", vb.port, "--name", "lab/t1", "--yes", "--wifi", "Home",
                 "--wifi-password-file", str(secret))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "hunter2" not in again.stdout + again.stderr and "no `network` module" in again.stdout
    config = json.loads((vb.flash / "ndn_config.json").read_text())
    assert config["key"] != old_key and config["wifi"] == {"ssid": "Home", "password": "hunter2"}
    with Client.connect_sync(home=home, client="alice", timeout=10) as alice:
        assert alice.call("lab/t1/setpoint") == 21.0  # the gateway signs with the new key
    # The old key's replay state does not pile up on the board (issue 15): only the current key's is left.
    new_kid = key_id(bytes.fromhex(config["key"]))
    assert f"  remove  ndn_seq_{key_id(bytes.fromhex(old_key))}" in again.stdout
    assert sorted(p.name for p in vb.flash.glob("ndn_seq_*")) == [f"ndn_seq_{new_kid}"]
    (vb.flash / "ndn_seq_0badc0de").write_text("64 64\n")  # left by a provisioning before this fix
    deployed = tool(env, home, "deploy", "--port", vb.port, "--app", str(THERMOSTAT))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "  remove  ndn_seq_0badc0de  (replay state of a key the board no longer holds)" in deployed.stdout
    assert sorted(p.name for p in vb.flash.glob("ndn_seq_*")) == [f"ndn_seq_{new_kid}"]


NO_DEVICE_APP = 'print("hello from an app that never starts a Device")\n'


def test_provision_of_an_app_that_never_serves_is_rolled_back(gateway, vboards, env, tmp_path):
    """Issue 15 item 3: the device stayed in the store as "unknown" for good. Now the failure is seen as soon as
    the app ends (the board's REPL banner), and what provisioning recorded is undone."""
    home = gateway.home
    assert cli(home, "client", "add", "alice")[0] == 0
    assert cli(home, "acl", "grant", "alice", "kitchen/**")[0] == 0
    vb = vboards()
    app = tmp_path / "nodevice.py"
    app.write_text(NO_DEVICE_APP)
    started = time.monotonic()
    prov = tool(env, home, "provision", "--port", vb.port, "--name", "kitchen/th2", "--app", str(app), "--wait", "30")
    assert prov.returncode == 1, prov.stdout + prov.stderr
    assert time.monotonic() - started < 20  # not the whole --wait
    one_error_line(prov.stderr, "the app ended without serving (the board is at its REPL)",
                   "rolled back: /edge/kitchen/th2 is not in the store", "ndn_config.json was removed")
    with Store(Home(home).db_path) as store:
        assert store.device("/edge/kitchen/th2") is None
    assert not (vb.flash / "ndn_config.json").exists()
    assert not list(vb.flash.glob("ndn_seq_*"))
    code, out, _ = cli(home, "devices", "--as", "alice", "--json")
    assert code == 0 and json.loads(out)["items"] == []


def test_an_app_that_does_not_compile_names_its_file_and_line(vboards, env, tmp_path):
    """Issue 15 item 12: it said `SyntaxError: invalid syntax`, without the file and the line."""
    vb = vboards()
    app = tmp_path / "broken.py"
    app.write_text("from device import Device\n\ndef handler(:\n    return 1\n")
    for verb in (("provision", "--name", "kitchen/th3"), ("deploy",)):
        run = tool(env, tmp_path / "home", *verb, "--port", vb.port, "--app", str(app))
        assert run.returncode == 1, run.stdout + run.stderr
        one_error_line(run.stderr, f"{verb[0]}: {app}, line 3: SyntaxError: invalid syntax: 'def handler(:'")
    with Store(Home(tmp_path / "home").db_path) as store:
        assert store.device("/edge/kitchen/th3") is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupting_provision_resets_the_board_and_says_so(vboards, env, micropython, tmp_path, sig):
    """Issue 15 item 9: Ctrl-C printed nothing and left the board in its raw REPL, offline. SIGTERM is the same."""
    from tests.support import mp_features
    vb = vboards("slow", "--baud", "38400")  # a serial line's speed: the copy takes a few seconds
    # the first file copied: the runtime's, or on a board whose firmware carries it frozen in, the Wi-Fi start-up's
    first = "lib/ndn_boot.mpy" if mp_features(micropython)["frozen"] else "lib/device/__init__.mpy"
    temp = vb.flash / f"{first}{TEMP_SUFFIX}"
    proc = subprocess.Popen([sys.executable, "-m", "ndn_edge.tools", "--home", str(tmp_path / "home"), "provision",
                             "--port", vb.port, "--name", "kitchen/th4", "--app", str(THERMOSTAT)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: temp.exists() or proc.poll() is not None, 30, what="the copy to start")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    one_error_line(err, "provision: interrupted while deploying the runtime and the app",
                   "the board was reset and runs its main.py", "nothing was recorded", "run provision again")
    with serial_port(vb.port) as ser:  # the friendly REPL answers a return with its prompt; the raw REPL would not
        ser.write(b"\r")
        read_until(ser, b">>> ", 10)
    with Store(Home(tmp_path / "home").db_path) as store:
        assert store.device("/edge/kitchen/th4") is None


# -- robustness


@pytest.mark.long(seconds=11)
def test_reset_in_the_middle_of_a_copy_then_deploy_repairs(vboards, env, tmp_path):
    home = tmp_path / "home"
    fast = vboards("board")
    first = tool(env, home, "deploy", "--port", fast.port, "--app", str(THERMOSTAT), "--no-reset")
    assert first.returncode == 0, first.stderr
    fast.stop()
    big = tmp_path / "big" / "thermostat.py"  # same file name: only app.mpy changes
    big.parent.mkdir()
    big.write_text(THERMOSTAT.read_text() + "\nBLOB = %r\n" % os.urandom(3000).hex())
    slow = vboards("board", "--baud", "38400")  # the same flash, read at a serial line's speed
    temp = slow.flash / f"app.mpy{TEMP_SUFFIX}"
    proc = subprocess.Popen([sys.executable, "-m", "ndn_edge.tools", "--home", str(home), "deploy", "--port", slow.port,
                             "--app", str(big), "--no-reset"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: temp.exists() or proc.poll() is not None, 30, what="the copy of app.mpy to start")
        slow.press_reset()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    one_error_line(err, "run again")
    assert temp.exists() and (slow.flash / "app.mpy").exists()  # the old app is intact beside the partial copy

    repair = tool(env, home, "deploy", "--port", slow.port, "--app", str(big), "--no-reset")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert "deploy: 1 copied" in repair.stdout and f"  remove  app.mpy{TEMP_SUFFIX}" in repair.stdout
    check = tool(env, home, "deploy", "--port", slow.port, "--app", str(big), "--no-reset")
    assert check.returncode == 0 and "deploy: 0 copied" in check.stdout and ", 0 removed" in check.stdout
    assert not list(slow.flash.rglob(f"*{TEMP_SUFFIX}"))


STUBBORN_MAIN = """\
import time
try:
    while True:
        pass
except KeyboardInterrupt:
    print("caught the first Ctrl-C")
    while True:
        time.sleep(0.01)
"""


def test_a_busy_board_that_resets_on_open_is_still_reachable(vboards, env, tmp_path):
    vb = vboards("busy", "--reset-on-open", files={"main.py": STUBBORN_MAIN})
    run = tool(env, tmp_path / "home", "deploy", "--port", vb.port, "--app", str(THERMOSTAT), "--no-reset")
    assert run.returncode == 0, run.stdout + run.stderr + vb.log()
    assert "hard reset (port opened)" in vb.log()
    assert (vb.flash / "app.mpy").exists() and "import app" in (vb.flash / "main.py").read_text()


# -- bad inputs


class FakeBoard:
    """A pty whose other end is served by a thread: "silent", "echo" (garbage back), or "garbage" (raw REPL
    handshake right, replies to code wrong)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.master, self.slave = os.openpty()
        import tty

        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        raw, line = False, b""
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if self.behaviour == "echo":
                os.write(self.master, data + b"\x1b[0m?ERR\r\n")
                continue
            if self.behaviour == "silent":
                continue
            for b in data:
                c = bytes([b])
                if c == b"\x01" and raw and line == b"\x05A":
                    os.write(self.master, b"R\x00>")
                    line = b""
                elif c == b"\x01":
                    raw, line = True, b""
                    os.write(self.master, RAW_PROMPT)
                elif c == b"\x03":
                    line = b""
                elif c == b"\x04" and raw:
                    reply = b"OK\r\nMPY: soft reboot\r\n" + RAW_PROMPT if not line else b"OK\xfe{not python\x04\x04>"
                    os.write(self.master, reply)
                    line = b""
                elif raw:
                    line += c

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def fake_board():
    made: list[FakeBoard] = []

    def make(behaviour: str) -> FakeBoard:
        board = FakeBoard(behaviour)
        made.append(board)
        return board

    yield make
    for board in made:
        board.close()


def test_bad_ports_give_one_line_errors(tmp_path, fake_board, vboards):
    home = tmp_path / "home"
    deploy = ("deploy", "--app", str(THERMOSTAT), "--connect-timeout", "1.5", "--port")

    code, _out, err = cli(home, *deploy, str(tmp_path / "ttyNOPE"))
    assert code == 1
    one_error_line(err, "no such port", "ttyNOPE", "list_ports")
    code, _, err = cli(home, "provision", "--name", "x/y", "--port", str(tmp_path / "ttyNOPE"))
    assert code == 1
    one_error_line(err, "no such port")
    code, _, err = cli(home, "provision", "--name", "x//y", "--port", str(tmp_path / "ttyNOPE"))
    assert code == 2  # the name is checked before the port is opened
    one_error_line(err, "provision: invalid device name 'x//y'")

    code, _, err = cli(home, *deploy, fake_board("silent").port)
    assert code == 1
    one_error_line(err, "no answer", "within 1.5 s", "ndn-edge flash")

    code, _, err = cli(home, *deploy, fake_board("echo").port)
    assert code == 1
    one_error_line(err, "no MicroPython prompt", "ERR")

    code, _, err = cli(home, *deploy, fake_board("garbage").port)
    assert code == 1
    one_error_line(err, "garbage reply", "not a Python value")

    vb = vboards()
    import serial

    firmware = tmp_path / "esp32.bin"
    firmware.write_bytes(esp_image(0))
    with serial.Serial(vb.port, exclusive=True):
        code, _, err = cli(home, *deploy, vb.port)
        assert code == 1
        one_error_line(err, "is busy", "another program")
        code, _, err = cli(home, "flash", "--board", "esp32", "--port", vb.port, str(firmware))
        assert code == 1
        one_error_line(err, "is busy")


def test_remote_tracebacks_become_local_errors():
    err = remote_exception(b'Traceback (most recent call last):\r\n  File "<stdin>", line 2, in <module>\r\n'
                           b"OSError: [Errno 28] ENOSPC\r\n")
    assert isinstance(err, OSError) and err.errno == 28 and "ENOSPC" in err.strerror
    old_style = remote_exception(b"OSError: 2\n")
    assert isinstance(old_style, OSError) and old_style.errno == 2
    other = remote_exception(b"Traceback (most recent call last):\n  File \"<stdin>\"\nValueError: bad\n")
    assert isinstance(other, RemoteError) and str(other) == "the board raised ValueError: bad"


def test_board_info_decodes_the_bytecode_version():
    info = BoardInfo("micropython", "1.24.1", 0x2806 | 0x100, "esp32", True, 100000, "ESP32 module", 1, 2, "")
    assert info.mpy_version == (6, 1) and info.arch == "xtensawin" and not info.is_unix_port
    assert BoardInfo("micropython", "1.29.0", 2822, "linux", False, 1, "", 1, 2, ".frozen/device/__init__.py") \
        .runtime_frozen



def test_the_board_tells_a_frozen_runtime_from_a_copied_one(run_mp):
    # On the real unix port: its asyncio is frozen in; `device` comes from the checkout, as from a board's lib/.
    out = run_mp(SOURCE_OF_SNIPPET + "print(repr((_src('asyncio'), _src('device'), _src('nowhere'))))\n"
                 "import sys\nprint(sorted(k for k in sys.modules if k.startswith('device')))")
    first, second = out.strip().splitlines()
    frozen, copied, missing = ast.literal_eval(first)
    assert frozen == ".frozen/asyncio" and missing == ""
    if run_mp("import device\nprint(device.__file__)").strip() == "device/__init__.py":
        assert copied == ".frozen/device"  # an interpreter built with the runtime frozen in (firmware/README.md)
    else:
        assert "/device/__init__." in copied and not copied.startswith(".frozen")
    assert second == "[]"  # unloaded again

def test_device_names_are_checked():
    assert device_name("kitchen/th1", "edge") == "/edge/kitchen/th1"
    assert device_name("/home/kitchen/th1", "home") == "/home/kitchen/th1"
    for bad in ("", "kitchen//th1", "_sd/x", "/other/kitchen", "a b", "../x"):
        with pytest.raises(ValueError):
            device_name(bad, "edge")


# -- flash: command building and firmware checks (no board needed)


def esp_image(chip_id: int, size: int = 4096) -> bytes:
    header = bytes([0xE9, 3, 2, 0x20]) + struct.pack("<I", 0x40080000) + bytes([0xEE, 0, 0, 0])
    header += struct.pack("<H", chip_id) + bytes(10)
    return header + bytes(size - len(header))


def uf2_image(blocks: int = 4, family: int = 0xE48BFF56) -> bytes:
    out = b""
    for i in range(blocks):
        head = struct.pack("<IIIIIIII", 0x0A324655, 0x9E5D5157, 0x2000, 0x10000000 + 256 * i, 256, i, blocks, family)
        out += head + bytes(476) + struct.pack("<I", 0x0AB16F30)
    return out


@pytest.mark.parametrize("board, offset, chip", [("esp32", "0x1000", "esp32"), ("esp32s3", "0x0", "esp32s3")])
def test_esptool_commands(board, offset, chip, tmp_path):
    profile = cmd_flash.load_profile(board)
    fw = tmp_path / "fw.bin"
    assert cmd_flash.esptool_commands(profile, "/dev/ttyUSB0", fw) == [
        ["--chip", chip, "--port", "/dev/ttyUSB0", "--baud", "460800", "erase-flash"],
        ["--chip", chip, "--port", "/dev/ttyUSB0", "--baud", "460800", "write-flash", "-z", offset, str(fw)]]
    assert cmd_flash.esptool_commands(profile, "COM3", fw, baud=115200, erase=False, esptool_major=4) == [
        ["--chip", chip, "--port", "COM3", "--baud", "115200", "write_flash", "-z", offset, str(fw)]]


def test_flash_dry_run_and_firmware_checks(tmp_path):
    home = tmp_path / "home"
    good = tmp_path / "esp32.bin"
    good.write_bytes(esp_image(0))
    code, out, err = cli(home, "flash", "--board", "esp32", "--port", "/dev/ttyUSB7", str(good), "--dry-run")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{sys.executable} -m esptool --chip esp32 --port /dev/ttyUSB7 --baud 460800 erase-flash",
        f"{sys.executable} -m esptool --chip esp32 --port /dev/ttyUSB7 --baud 460800 write-flash -z 0x1000 {good}"]

    cases = [
        ("esp32", esp_image(9), "firmware for ESP32-S3, not for esp32"),
        ("esp32s3", esp_image(0), "firmware for ESP32, not for esp32s3"),
        ("esp32", uf2_image(), "is a UF2 image"),
        ("esp32", b"\x7fELF" + bytes(60), "is an ELF file"),
        ("esp32", b"<html>404</html>", "not firmware (it starts with 3c 68 74 6d)"),
        ("esp32", b"", "is empty"),
        ("rp2-pico-w", esp_image(0), "is an ESP32 firmware image, not a UF2 image"),
        ("rp2-pico-w", uf2_image()[:-100], "not whole 512-byte UF2 blocks"),
        ("rp2-pico-w", uf2_image(family=0xE48BFF59), "firmware for RP2350 (ARM), not for rp2-pico-w"),
        ("rp2-pico-w", uf2_image()[:1020] + b"XXXX" + uf2_image()[1024:], "block 1 is not a UF2 block"),
    ]
    for board, data, message in cases:
        bad = tmp_path / "fw"
        bad.write_bytes(data)
        code, _, err = cli(home, "flash", "--board", board, "--port", "/dev/ttyUSB7", str(bad), "--dry-run")
        assert code == 1, (board, message)
        one_error_line(err, message)
    code, _, err = cli(home, "flash", "--board", "esp32", "--port", "/dev/ttyUSB7", str(tmp_path / "missing.bin"))
    one_error_line(err, "no such file")
    code, _, err = cli(home, "flash", "--board", "esp32", str(good))
    one_error_line(err, "needs --port")
    code, _, err = cli(home, "flash", "--board", "esp32", "--port", str(tmp_path / "ttyNOPE"), str(good))
    assert code == 1
    one_error_line(err, "no such port")


def test_flash_copies_a_uf2_to_the_boot_drive(tmp_path):
    home = tmp_path / "home"
    fw = tmp_path / "RPI_PICO_W.uf2"
    fw.write_bytes(uf2_image(8))
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    code, _, err = cli(home, "flash", "--board", "rp2-pico-w", "--mount", str(drive), "--wait", "0.3", str(fw))
    assert code == 1
    one_error_line(err, "no RPI-RP2 drive", str(drive), "BOOTSEL")
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n")
    code, out, err = cli(home, "flash", "--board", "rp2-pico-w", "--mount", str(drive), "--wait", "0.3", str(fw))
    assert (code, err) == (0, ""), err
    assert (drive / fw.name).read_bytes() == fw.read_bytes()
    assert "copying RPI_PICO_W.uf2 (4096 bytes)" in out


def _board_manifests() -> list[tuple[Path, tuple[str, ...]]]:
    """Each board's manifest and the unix port's (for `bench device --frozen`), with the port manifests each may
    include first."""
    manifests = [(ROOT / "firmware" / "boards" / board / "manifest.py",
                  ("$(PORT_DIR)/boards/manifest.py", "$(BOARD_DIR)/manifest.py")) for board in cmd_flash.BOARDS]
    manifests.append((ROOT / "firmware" / "unix" / "manifest.py", ("$(PORT_DIR)/variants/standard/manifest.py",)))
    return manifests


def _what_a_board_runs() -> list[str]:
    """The runtime as `ndn-edge deploy` copies it (no host-only shims), plus the Wi-Fi start-up module."""
    from ndn_edge.tools.micropython import runtime_sources

    return sorted([f"device/{p.name}" for p in runtime_sources()] + ["ndn_boot.py"])


def test_board_profiles_and_manifests_freeze_exactly_the_runtime(monkeypatch):
    """Each board's manifest, run with the manifest API's path rules (tests/manifests.py), freezes after the port's
    own manifest exactly what a board runs: every runtime module, not the CPython shims, versioned as ndn_edge."""
    from ndn_edge import __version__
    from ndn_edge.tools.micropython import HOST_ONLY
    from tests.manifests import read_with_stand_in

    monkeypatch.chdir(ROOT)
    for board in cmd_flash.BOARDS:
        profile = cmd_flash.load_profile(board)
        assert profile.board == board and profile.firmware_url.startswith("https://micropython.org/")
    assert HOST_ONLY == ("_cpython.py",) and (ROOT / "device" / "_cpython.py").exists()
    for manifest, port_manifests in _board_manifests():
        frozen = read_with_stand_in(manifest)
        assert frozen.included and frozen.included[0] in port_manifests
        assert sorted(frozen.targets) == _what_a_board_runs(), manifest
        assert "device/_cpython.py" not in frozen.targets
        assert frozen.metadata["version"] == __version__


def test_manifests_by_micropythons_own_rules(tmp_path):
    """The same, read by MicroPython's tools/manifestfile.py (freeze mode) from its source in ../shared."""
    from ndn_edge import __version__
    from tests.manifests import SOURCE_ENV, manifestfile_module, read_with_micropython

    manifestfile = manifestfile_module(tmp_path)
    if manifestfile is None:
        pytest.skip(f"no MicroPython source in ../shared/micropython or ${SOURCE_ENV}")
    for manifest, _ in _board_manifests():
        frozen = read_with_micropython(manifestfile, manifest, tmp_path / manifest.parent.name)
        assert sorted(frozen.targets) == _what_a_board_runs(), manifest
        assert frozen.metadata["version"] == __version__ and frozen.metadata["license"] == "MIT"


# -- deploy planning (against a board double: the end-to-end tests above use real boards)


class BoardDouble:
    """Files of a board as a dict; records what a deploy writes and removes."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.written: list[str] = []
        self.removed: list[str] = []

    def listdir(self, folders):
        out = {}
        for path, data in self.files.items():
            parent = path.rpartition("/")[0]
            if parent in folders:
                out[path] = len(data)
            for i in range(1, path.count("/") + 1):
                folder = "/".join(path.split("/")[:i])
                if folder.rpartition("/")[0] in folders:
                    out[folder] = None
        return out

    def sha256(self, paths):
        import hashlib

        return {p: hashlib.sha256(self.files[p]).hexdigest() if p in self.files else None for p in paths}

    def mkdir(self, folders):
        pass

    def remove(self, paths):
        self.removed += paths
        for p in paths:
            self.files.pop(p, None)

    def write_file(self, path, data, progress=None):
        self.written.append(path)
        self.files[path] = data


def test_deploy_plan_copies_what_differs_and_removes_leftovers():
    from ndn_edge.tools.deploy import BoardFile, Bundle, apply, plan

    info = BoardInfo("micropython", "1.24.1", 0x0B06, "esp32", True, 100000, "", 1 << 20, 2 << 20, "")
    bundle = Bundle([BoardFile("lib/device/a.mpy", b"A2", "runtime"), BoardFile("lib/device/b.mpy", b"B", "runtime"),
                     BoardFile("app.mpy", b"APP", "app"), BoardFile("main.py", b"import app", "main")],
                    "test", owned_dirs=("lib/device",), obsolete=("app.py",))
    board = BoardDouble({"lib/device/a.mpy": b"A1", "lib/device/b.mpy": b"B", "lib/device/gone.mpy": b"old",
                         "lib/device/a.mpy" + TEMP_SUFFIX: b"A", "app.py": b"old app", "notes.txt": b"mine",
                         "ndn_config.json": b"{}"})
    the_plan = plan(board, info, bundle)
    assert [f.path for f in the_plan.copy] == ["lib/device/a.mpy", "app.mpy", "main.py"]
    assert [f.path for f in the_plan.same] == ["lib/device/b.mpy"]
    assert sorted(the_plan.remove) == sorted(["lib/device/a.mpy" + TEMP_SUFFIX, "lib/device/gone.mpy", "app.py"])
    apply(board, the_plan, io.StringIO())
    assert board.removed[0].endswith(TEMP_SUFFIX)  # leftovers go first: they hold space
    assert "notes.txt" in board.files and "ndn_config.json" in board.files  # not deploy's to remove
    assert plan(board, info, bundle).copy == []


def test_deploy_refuses_to_start_without_room():
    from ndn_edge.tools.deploy import BoardFile, Bundle, apply, plan
    from ndn_edge.tools.errors import CommandError

    info = BoardInfo("micropython", "1.24.1", 0x0B06, "rp2", True, 100000, "", 40 * 1024, 1 << 20, "")
    board = BoardDouble({})
    the_plan = plan(board, info, Bundle([BoardFile("app.mpy", bytes(100 * 1024), "app")], "test"))
    with pytest.raises(CommandError, match=r"deploy: the board has 40 KiB free and the files need 104 KiB"):
        apply(board, the_plan, io.StringIO())
    assert board.written == []


def test_native_code_with_an_unreadable_mpy_cross_is_a_clear_error(tmp_path):
    """mypy found it: with an mpy-cross whose version cannot be read, an app with native code crashed with a
    TypeError formatting the version it could not read."""
    from ndn_edge.tools.deploy import _compiler_flags
    from ndn_edge.tools.errors import CommandError
    from ndn_edge.tools.repl import BoardInfo

    broken = tmp_path / "mpy-cross"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    info = BoardInfo(implementation="micropython", version="1.24.1", mpy=6 | 3 << 8 | 2 << 10, platform="esp32",
                     network=True, heap_free=100_000, machine="ESP32", flash_free=1 << 20, flash_total=2 << 20,
                     runtime_file="")
    with pytest.raises(CommandError, match=r"needs mpy-cross for \.mpy v6\.3 .*this mpy-cross emits v\?"):
        _compiler_flags(str(broken), info, True, "deploy")
    flags, how = _compiler_flags(str(broken), info, False, "deploy")
    assert flags is None and "emits .mpy v?" in how


def test_mpremote_installs_the_runtime_with_mip(vboards, http_root):
    # `mpremote mip install URL/device/package.json`, as a user would from GitHub (github:OWNER/REPO/...): the
    # compiled runtime lands in the board's lib/device/.
    pytest.importorskip("mpremote", reason="mpremote is not installed (pip install mpremote)")
    vb = vboards()
    run = subprocess.run([sys.executable, "-m", "mpremote", "connect", vb.port, "mip", "install", "--target", "lib",
                          f"{http_root}/device/package.json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Done" in run.stdout, run.stdout + run.stderr
    installed = sorted(p.name for p in (vb.flash / "lib" / "device").iterdir())
    assert installed == sorted(f"{p.stem}.mpy" for p in mp.runtime_sources())
    assert (vb.flash / "lib" / "device" / "runtime.mpy").read_bytes() == \
        (ROOT / "device" / mp.MIP_FOLDER / "runtime.mpy").read_bytes()
