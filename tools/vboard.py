"""`ndn-edge vboard`: a virtual board, the real MicroPython unix port behind a pseudo-terminal.

The pty's slave end (`/dev/pts/N`, also linked as `DIR/port`) is the board's "USB serial port": `provision`,
`deploy`, `mpremote` and terminal programs open it as they would a real board's. The master end is served
here, speaking MicroPython's REPL protocol as `shared/runtime/pyexec.c` does on a board:
- friendly REPL: banner, `>>> ` prompt with echo, continuation lines (`... `), Ctrl-E paste mode;
- Ctrl-A raw REPL (`raw REPL; CTRL-B to exit\\r\\n>`): code ended by Ctrl-D is answered `OK`, its output, `\\x04`,
  the traceback if any, `\\x04>`; raw-paste mode (`\\x05A\\x01` answered `R\\x01` and a flow-control window);
  Ctrl-B back to the friendly REPL;
- Ctrl-C interrupts the running program (SIGINT to the interpreter, which raises KeyboardInterrupt);
- Ctrl-D at an empty prompt (or with empty raw input) soft-resets: a fresh interpreter runs `boot.py`, then
  `main.py` in friendly mode, exactly as a board's `main.c` does. A board's flash is `DIR/flash` (kept across
  resets and runs); modules are imported from it, its `lib/` and `.frozen`.

Code runs in one persistent `micropython -X heapsize=HEAP` child per boot (`tools/onboard/vboard_agent.py`),
which executes framed code blocks in one globals dict, so variables survive between raw-REPL commands as on a
board, and `main.py` (the device app) runs inside it: a board in `while True` is interrupted by Ctrl-C.
The agent's own code lives in that heap too (about 7.5 KiB on a 64-bit host); the interpreter gets that much on top
of `--heap` (`AGENT_HEAP_BYTES`), so code on a vboard sees the free heap a board with that heap would have.
`os.ilistdir` on the unix port yields (name, type, inode) where a board's file systems add the size; the agent
gives it the size (`tools/onboard/vboard_os.py`), so `mpremote ls` shows sizes as on a board.

Decisions:
- Frames to the agent go on their own pipe and its replies ("started", "done") on another; the program's
  output is its stdout, forwarded as it comes with `\\n` -> `\\r\\n` as a board's cooked output. Nothing needs
  escaping, and "done" is read only after the output pipe is drained, so output always precedes `\\x04`.
- SIGINT is sent only while a job runs (between the agent's "started" and "done" frames); a Ctrl-C that arrives
  before "started" waits for it. Bytes other than Ctrl-C received while a program runs are queued, as in a
  board's stdin buffer (bounded: excess is dropped, as a full UART buffer drops).
- No host on the port (slave closed: the master polls POLLHUP): output is dropped, as a USB serial adapter
  with nobody listening drops it, so the next opener does not read stale text.
- `--reset-on-open` emulates boards whose USB-UART bridge resets the chip when the port is opened (DTR wired
  to EN): opening the port hard-resets the vboard, and input during its boot is lost. `--baud` throttles what
  the board reads to a serial line's rate. SIGUSR1 is the reset button.
- Started in the background of a terminal (`ndn-edge vboard &`), its status lines after the first ones go to
  `DIR/vboard.log`, so they do not run into the output of `provision` in the same terminal.
Rejected: running each command in a fresh `micropython -c` (no shared state, no interruptible main.py), and a
CPython emulation of the REPL's execution (the point is to run the real port's bytecode, heap and modules).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ndn_edge import resources
from ndn_edge.tools.errors import CommandError, UsageError

if TYPE_CHECKING:
    from ndn_edge.tools.cli import State

AGENT = "vboard_agent.py"  # in the shipped onboard snippets (ndn_edge.resources)
FLASH_DIR = "flash"
PORT_LINK = "port"
LOCK_FILE = ".vboard.lock"
DEFAULT_HEAP = "96K"
LOG_FILE = "vboard.log"
# What the agent (vboard_agent.py, vboard_os.py: bytecode, globals, buffers) keeps in the interpreter's heap, added
# to --heap so that code on a vboard finds the free heap of a board with that heap. Measured on a 64-bit unix port;
# half of it on a 32-bit one, whose objects are half the size (tests/test_boards.py checks the two stay within
# 1.5 KiB of each other, on both).
AGENT_HEAP_BYTES = 7680

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 0x01, 0x02, 0x03, 0x04, 0x05
_BACKSPACES = (0x08, 0x7F)
_ESC = 0x1B
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
SOFT_REBOOT = b"MPY: soft reboot\r\n"
PASTE_WINDOW = 256  # raw-paste flow-control window (a board announces half its stdin buffer)
_QUEUE_MAX = 1024  # input kept while a program runs; more is dropped, as by a board's stdin buffer
_OUT_MAX = 65536  # output waiting for the host beyond which the interpreter's output is not read (backpressure)
_HOST_POLL_S = 0.05  # how often to look for a host opening the port while none has it open
_START_TIMEOUT_S = 10.0  # for the interpreter's hello, and for "started" after a job is sent
_HARD_BOOT_S = 0.3  # after a hard reset the board hears nothing for this long (ROM boot)
_CRASH_WINDOW_S = 5.0
_CRASH_PAUSE_S = 1.0
_HEAP = re.compile(r"[1-9][0-9]*[KkMm]?")
_COMPOUND = (b"if", b"while", b"for", b"def", b"class", b"try", b"with", b"async")


@dataclass
class _Job:
    """What the interpreter is running: `kind` is boot, main, line (friendly REPL), raw or paste."""

    kind: str
    fid: int
    sent_at: float
    started: bool = False
    interrupt: bool = False


@dataclass
class _Child:
    proc: subprocess.Popen
    cmd_w: int
    ctl_r: int
    out_r: int
    ctl_buf: bytearray = field(default_factory=bytearray)


class VirtualBoard:
    """One virtual board: a pty served with MicroPython's REPL protocol, code run by a MicroPython child."""

    def __init__(self, folder: Path, *, micropython: str, heap: str = DEFAULT_HEAP, baud: int | None = None,
                 reset_on_open: bool = False, log: Any = None) -> None:
        self.folder = Path(folder).absolute()
        self.flash = self.folder / FLASH_DIR
        self.link = self.folder / PORT_LINK
        self.micropython = micropython
        self.heap = heap
        self.heap_bytes = heap_bytes(heap)
        self.reset_on_open = reset_on_open
        self.log = log if log is not None else sys.stdout
        self.port_path = ""
        self.version = ""
        self.machine = ""
        self._agent_bytes: int | None = None
        self._rate = baud / 10.0 if baud else None  # bytes per second: 8N1 spends 10 bits per byte
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self._master = -1
        self._lock_fd = -1
        self._hup = select.poll()
        self._poll = select.poll()
        self._host = False
        self._child: _Child | None = None
        self._job: _Job | None = None
        self._fid = 0
        self._queue = bytearray()
        self._out = bytearray()  # output the host has not taken yet
        self._deaf_until = 0.0
        self._crashes: list[float] = []
        self._wake_r = self._wake_w = -1
        self._stop = False
        self._reset_requested = False
        # REPL state
        self._raw = False
        self._line = bytearray()
        self._cont = bytearray()  # a compound statement being entered (friendly REPL)
        self._fpaste = False  # friendly paste mode (Ctrl-E)
        self._rpaste = False  # raw-paste mode, receiving code
        self._window = 0
        self._esc = 0  # bytes of an escape sequence still to skip
        self._last = 0

    # -- life cycle

    def open(self) -> str:
        """Create the flash folder and the pty, start the interpreter (power-on); returns the port path."""
        for folder in (self.folder, self.flash):  # private: the flash holds the device key
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"vboard: {folder} is a file, not a folder; pass --dir a folder (it is created if "
                                 "missing)")
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        self._lock()
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: bytes pass as on a USB serial port
        self.port_path = os.ttyname(slave)
        os.close(slave)  # the host opens it by path; while nobody has it open the master polls POLLHUP
        os.set_blocking(master, False)
        self._master = master
        self._hup.register(master, select.POLLIN)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poll.register(self._wake_r, select.POLLIN)
        self._link()
        self._power_on()
        return self.port_path

    def close(self) -> None:
        """Stop the interpreter, close the pty, remove the port link (if it is still ours)."""
        self._kill_child()
        try:
            if os.readlink(self.link) == self.port_path:
                self.link.unlink()
        except OSError:
            pass
        for fd in (self._master, self._wake_r, self._wake_w, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._master = self._wake_r = self._wake_w = self._lock_fd = -1

    def stop(self) -> None:
        """Ask `serve` to return (from a signal handler or another thread)."""
        self._stop = True
        self._wake()

    def hard_reset(self) -> None:
        """Press the reset button (from a signal handler or another thread)."""
        self._reset_requested = True
        self._wake()

    def serve(self) -> None:
        """Serve the port until `stop()`."""
        while not self._stop:
            self._poll_once(self._timeout_s())

    # -- the loop

    def _timeout_s(self) -> float:
        timeout = 1.0
        if not self._host:
            timeout = _HOST_POLL_S
        if self._rate is not None and self._tokens < 1:
            timeout = min(timeout, max(0.001, (1 - self._tokens) / self._rate))
        if self._job is not None and not self._job.started:
            timeout = min(timeout, max(0.01, self._job.sent_at + _START_TIMEOUT_S - time.monotonic()))
        return timeout

    def _poll_once(self, timeout_s: float) -> None:
        try:
            events = self._poll.poll(int(timeout_s * 1000) + 1)
        except InterruptedError:
            events = []
        if self._reset_requested:
            self._reset_requested = False
            self._hard_reset("reset button")
            return
        child = self._child
        for fd, ev in events:
            if fd == self._wake_r:
                _drain(self._wake_r)
            elif fd == self._master:
                if ev & select.POLLOUT:
                    self._flush()
                self._on_host(ev)
            elif child is not None and child is self._child and fd == child.out_r:
                self._forward_output()
            elif child is not None and child is self._child and fd == child.ctl_r:
                self._on_control()
        self._check_host()
        self._refill()
        self._watchdog()
        self._pump()
        self._update_masks()

    def _check_host(self) -> None:
        present = self._host_present()
        if present and not self._host:
            self._host = True
            self._poll.register(self._master, select.POLLIN)
            self._say("host opened the port")
            if self.reset_on_open:
                self._hard_reset("port opened")
        elif not present and self._host:
            self._host = False
            self._out.clear()
            self._poll.unregister(self._master)
            self._say("host closed the port")

    def _host_present(self) -> bool:
        return not any(ev & select.POLLHUP for _, ev in self._hup.poll(0))

    def _on_host(self, ev: int) -> None:
        if not ev & select.POLLIN:
            return
        limit = 4096
        if self._rate is not None:
            limit = min(limit, int(self._tokens))
            if limit <= 0:
                return
        try:
            data = os.read(self._master, limit)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno == errno.EIO:  # the host closed the port
                return
            raise
        if self._rate is not None:
            self._tokens -= len(data)
        if time.monotonic() < self._deaf_until:
            return  # still booting after a hard reset: nobody reads the UART
        for b in data:
            if self._job is not None and b == CTRL_C:
                self._interrupt()
            elif len(self._queue) < _QUEUE_MAX or self._job is None:
                self._queue.append(b)

    def _refill(self) -> None:
        if self._rate is None:
            return
        now = time.monotonic()
        burst = max(16.0, self._rate / 50)
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * self._rate)
        self._tokens_at = now

    def _update_masks(self) -> None:
        """Read the host only within the line rate, write it while output waits, read the interpreter's
        output only while little is waiting (a board blocks on a full USB buffer, it does not lose output)."""
        if self._host:
            mask = select.POLLIN if self._rate is None or self._tokens >= 1 else 0
            self._poll.modify(self._master, mask | (select.POLLOUT if self._out else 0))
        child = self._child
        if child is not None:
            self._poll.modify(child.out_r, select.POLLIN if len(self._out) < _OUT_MAX else 0)

    def _watchdog(self) -> None:
        child = self._child
        if child is not None and child.proc.poll() is not None:
            self._crashed()
            return
        job = self._job
        if job is not None and not job.started and time.monotonic() - job.sent_at > _START_TIMEOUT_S:
            self._hard_reset("MicroPython stopped answering")

    # -- output

    def _emit(self, data: bytes) -> None:
        """Send bytes to the host, in order; dropped while no host has the port open."""
        if not data or self._master < 0 or not self._host_present():
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = os.write(self._master, self._out)
            except BlockingIOError:
                return  # the rest goes when the master polls writable
            except OSError as err:
                if err.errno == errno.EIO:  # the host went away
                    self._out.clear()
                    return
                raise
            del self._out[:n]

    def _banner(self) -> bytes:
        return (f"MicroPython v{self.version} on vboard; {self.machine} with heap {self.heap}\r\n"
                'Type "help()" for more information.\r\n').encode()

    def _say(self, text: str) -> None:
        print(f"ndn-edge vboard: {text}", file=self.log, flush=True)

    # -- REPL state machine (input is consumed only while no program runs)

    def _pump(self) -> None:
        while self._queue and self._job is None and self._child is not None:
            b = self._queue.pop(0)
            if self._rpaste:
                self._raw_paste_char(b)
            elif self._raw:
                self._raw_char(b)
            elif self._fpaste:
                self._paste_char(b)
            else:
                self._friendly_char(b)

    def _raw_char(self, b: int) -> None:
        line = self._line
        if b == CTRL_A:
            if len(line) == 2 and line[0] == CTRL_E:
                if line[1] == ord("A"):  # raw-paste: accept, announce the window and one free window
                    self._emit(b"R\x01" + struct.pack("<H", PASTE_WINDOW) + b"\x01")
                    self._rpaste = True
                    self._window = PASTE_WINDOW
                    line.clear()
                    return
                self._emit(b"R\x00>")
                line.clear()
                return
            line.clear()
            self._emit(RAW_BANNER + b">")
        elif b == CTRL_B:
            line.clear()
            self._raw = False
            self._emit(b"\r\n" + self._banner() + b">>> ")
        elif b == CTRL_C:
            line.clear()
        elif b == CTRL_D:
            self._emit(b"OK")
            if not line:
                self._emit(b"\r\n")
                self._soft_reset()
                return
            code = bytes(line)
            line.clear()
            self._start("raw", b"x", code)
        else:
            line.append(b)

    def _raw_paste_char(self, b: int) -> None:
        if b == CTRL_D:
            self._rpaste = False
            self._emit(b"\x04")
            code = bytes(self._line)
            self._line.clear()
            self._start("paste", b"x", code)
        elif b == CTRL_C:
            self._rpaste = False
            self._line.clear()
            self._emit(b"\x04\x04KeyboardInterrupt: \r\n\x04>")
        else:
            self._line.append(b)
            self._window -= 1
            if self._window == 0:
                self._window = PASTE_WINDOW
                self._emit(b"\x01")

    def _paste_char(self, b: int) -> None:
        if b == CTRL_C:
            self._fpaste = False
            self._line.clear()
            self._emit(b"\r\n>>> ")
        elif b == CTRL_D:
            self._fpaste = False
            self._emit(b"\r\n")
            code = bytes(self._line).replace(b"\r", b"\n")
            self._line.clear()
            self._start("line", b"x", code)
        else:
            self._line.append(b)
            self._emit(b"\r\n=== " if b == 0x0D else bytes([b]))

    def _friendly_char(self, b: int) -> None:
        line = self._line
        last, self._last = self._last, b
        if self._esc:
            # skip "ESC [ ... final": cursor keys and the like are not supported
            self._esc = 0 if (self._esc == 2 and 0x40 <= b <= 0x7E) or (self._esc == 1 and b != ord("[")) else 2
            return
        if b == _ESC:
            self._esc = 1
        elif b == CTRL_A:
            line.clear()
            self._cont.clear()
            self._raw = True
            self._emit(b"\r\n" + RAW_BANNER + b">")
        elif b == CTRL_B:
            line.clear()
            self._cont.clear()
            self._emit(b"\r\n" + self._banner() + b">>> ")
        elif b == CTRL_C:
            line.clear()
            self._cont.clear()
            self._emit(b"\r\n>>> ")
        elif b == CTRL_D:
            if line:
                return
            if self._cont:
                self._emit(b"\r\n")
                self._exec_cont()
                return
            self._emit(b"\r\n")
            self._soft_reset()
        elif b == CTRL_E:
            line.clear()
            self._cont.clear()
            self._fpaste = True
            self._emit(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
        elif b == 0x0D or (b == 0x0A and last != 0x0D):
            self._emit(b"\r\n")
            self._enter()
        elif b in _BACKSPACES:
            if line:
                line.pop()
                self._emit(b"\b \b")
        elif b >= 0x20 or b == 0x09:
            line.append(b)
            self._emit(bytes([b]))

    def _enter(self) -> None:
        text = bytes(self._line)
        self._line.clear()
        if self._cont:
            if text.strip():
                self._cont += text + b"\n"
                self._emit(b"... ")
            else:
                self._exec_cont()
            return
        if not text.strip():
            self._emit(b">>> ")
        elif _needs_more(text):
            self._cont += text + b"\n"
            self._emit(b"... ")
        else:
            self._start("line", b"s", text)

    def _exec_cont(self) -> None:
        code = bytes(self._cont)
        self._cont.clear()
        self._start("line", b"s", code)

    # -- jobs

    def _start(self, kind: str, exec_kind: bytes, body: bytes) -> None:
        child = self._child
        assert child is not None
        self._fid += 1
        self._job = _Job(kind, self._fid, time.monotonic())
        if CTRL_C in self._queue:  # typed right behind the command: interrupt it, as the user meant
            del self._queue[:self._queue.index(CTRL_C) + 1]
            self._job.interrupt = True
        frame = exec_kind + struct.pack(">II", self._fid, len(body)) + body
        try:
            _write_all(child.cmd_w, frame)
        except OSError:  # the interpreter died; the watchdog restarts it
            pass

    def _interrupt(self) -> None:
        job = self._job
        if job is None:
            return
        if not job.started:
            job.interrupt = True
        elif self._child is not None:
            try:
                self._child.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass

    def _on_control(self) -> None:
        child = self._child
        assert child is not None
        try:
            data = os.read(child.ctl_r, 65536)
        except BlockingIOError:
            return
        if not data:
            self._crashed()
            return
        child.ctl_buf += data
        while True:
            frame = _take_frame(child.ctl_buf)
            if frame is None:
                return
            tag, fid, status, text = frame
            job = self._job
            if job is None or fid != job.fid:
                continue  # a repeated "done" after a late interrupt
            if tag == b"S":
                job.started = True
                if job.interrupt:
                    job.interrupt = False
                    self._interrupt()
            elif tag == b"D":
                self._forward_output(everything=True)  # the job's output goes before its end marker
                self._job = None
                self._finished(job, status, text)
                if self._child is not child:
                    return  # the job's end reset the board

    def _finished(self, job: _Job, status: bytes, text: bytes) -> None:
        err = text.replace(b"\n", b"\r\n")
        if status == b"X":  # SystemExit: the board soft-resets
            if job.kind in ("raw", "paste"):
                self._emit(b"\x04\x04")
            self._soft_reset()
        elif job.kind in ("raw", "paste"):
            self._emit(b"\x04" + err + b"\x04>")
        elif job.kind == "line":
            self._emit(err + b">>> ")
        elif job.kind == "boot":
            self._emit(err)
            self._after_boot()
        else:  # main.py ended: the friendly REPL starts
            self._emit(err + self._banner() + b">>> ")

    def _forward_output(self, *, everything: bool = False) -> None:
        """Pass the interpreter's output on, up to `_OUT_MAX` waiting (all that is in the pipe if `everything`)."""
        child = self._child
        if child is None:
            return
        while everything or len(self._out) < _OUT_MAX:
            try:
                data = os.read(child.out_r, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self._emit(data.replace(b"\n", b"\r\n"))

    # -- resets

    def _power_on(self) -> None:
        self._spawn()
        self._say(f"MicroPython {self.version} (heap {self.heap}), flash {self.flash}")
        self._boot()

    def _soft_reset(self) -> None:
        self._say("soft reset")
        self._emit(SOFT_REBOOT)
        self._kill_child()
        self._reset_repl(raw=self._raw)
        self._spawn()
        self._boot()

    def _hard_reset(self, why: str) -> None:
        self._say(f"hard reset ({why})")
        self._kill_child()
        self._reset_repl(raw=False)
        self._queue.clear()
        self._out.clear()
        self._deaf_until = time.monotonic() + _HARD_BOOT_S
        self._emit(f"\r\nvboard: hard reset ({why})\r\n".encode())
        self._spawn()
        self._boot()

    def _crashed(self) -> None:
        child = self._child
        assert child is not None
        self._forward_output(everything=True)
        code = child.proc.wait()
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < _CRASH_WINDOW_S] + [now]
        self._emit(f"\r\nvboard: MicroPython exited with code {code}\r\n".encode())
        if len(self._crashes) >= 3:
            time.sleep(_CRASH_PAUSE_S)  # a board that keeps crashing reboots slowly, not in a tight loop
        self._hard_reset(f"MicroPython exited with code {code}")

    def _reset_repl(self, *, raw: bool) -> None:
        self._job = None
        self._raw = raw
        self._line.clear()
        self._cont.clear()
        self._fpaste = self._rpaste = False
        self._esc = 0

    def _boot(self) -> None:
        if (self.flash / "boot.py").is_file():
            self._start("boot", b"f", b"boot.py")
        else:
            self._after_boot()

    def _after_boot(self) -> None:
        if self._raw:
            self._emit(RAW_BANNER + b">")
        elif (self.flash / "main.py").is_file():
            self._start("main", b"f", b"main.py")
        else:
            self._emit(self._banner() + b">>> ")

    # -- the interpreter process

    def _spawn(self) -> None:
        cmd_r, cmd_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        out_r, out_w = os.pipe()
        env = dict(os.environ, MICROPYPATH=".frozen:lib")
        try:
            proc = subprocess.Popen(
                [self.micropython, "-X", f"heapsize={self.heap_bytes + self._agent_heap()}",
                 str(resources.file("onboard", AGENT)), str(cmd_r), str(ctl_w)],
                cwd=self.flash, env=env, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w,
                pass_fds=(cmd_r, ctl_w), start_new_session=True,  # only this process decides on SIGINT
                preexec_fn=_child_setup)
        except OSError as err:
            for fd in (cmd_r, cmd_w, ctl_r, ctl_w, out_r, out_w):
                os.close(fd)
            raise CommandError(f"vboard: cannot start {self.micropython}: {err.strerror or err}") from err
        for fd in (cmd_r, ctl_w, out_w):
            os.close(fd)
        os.set_blocking(ctl_r, False)
        os.set_blocking(out_r, False)
        child = _Child(proc, cmd_w, ctl_r, out_r)
        self._child = child
        self._hello(child)
        self._poll.register(out_r, select.POLLIN)
        self._poll.register(ctl_r, select.POLLIN)

    def _agent_heap(self) -> int:
        """AGENT_HEAP_BYTES for a 64-bit interpreter, half for a 32-bit one (asked once)."""
        if self._agent_bytes is None:
            try:
                done = subprocess.run([self.micropython, "-c", "import sys; print(sys.maxsize > 2**32)"],
                                      capture_output=True, text=True, timeout=10)
                wide = done.stdout.strip() != "False"
            except (OSError, subprocess.TimeoutExpired):
                wide = True  # _spawn then says what is wrong with the interpreter
            self._agent_bytes = AGENT_HEAP_BYTES if wide else AGENT_HEAP_BYTES // 2
        return self._agent_bytes

    def _hello(self, child: _Child) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        waiter = select.poll()
        waiter.register(child.ctl_r, select.POLLIN)
        while True:
            if len(child.ctl_buf) >= 5:
                n = struct.unpack(">I", child.ctl_buf[1:5])[0]
                if child.ctl_buf[:1] == b"H" and len(child.ctl_buf) >= 5 + n:
                    version, _mpy, _platform, machine = bytes(child.ctl_buf[5:5 + n]).decode().split("|")
                    del child.ctl_buf[:5 + n]
                    self.version, self.machine = version, machine
                    return
            left = deadline - time.monotonic()
            if left <= 0 or child.proc.poll() is not None or \
                    (len(child.ctl_buf) >= 1 and child.ctl_buf[:1] != b"H"):
                out = _read_now(child.out_r)
                self._kill_child()
                raise CommandError(f"vboard: {self.micropython} did not start ({out.strip()[-200:]!r}); check "
                                   f"that it is the MicroPython unix port and that --heap {self.heap} is valid")
            if waiter.poll(int(left * 1000) + 1):
                try:
                    data = os.read(child.ctl_r, 4096)
                except BlockingIOError:
                    continue
                if not data:
                    child.proc.wait()
                    continue
                child.ctl_buf += data

    def _kill_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait()
        for fd in (child.out_r, child.ctl_r):
            try:
                self._poll.unregister(fd)
            except KeyError:
                pass
        for fd in (child.cmd_w, child.ctl_r, child.out_r):
            os.close(fd)

    # -- files

    def _lock(self) -> None:
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CommandError(f"vboard: {self.folder} is in use by another vboard (pid {other}); "
                               "stop it or pass another --dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _link(self) -> None:
        tmp = self.folder / f".{PORT_LINK}.{os.getpid()}"
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        os.symlink(self.port_path, tmp)
        os.replace(tmp, self.link)

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass


def _needs_more(text: bytes) -> bool:
    """Whether a friendly-REPL line opens a compound statement or leaves a bracket or string open."""
    s = text.rstrip()
    first = s.lstrip().split(b" ", 1)[0].rstrip(b":")
    if s.endswith((b":", b"\\")) or s.lstrip().startswith(b"@") or first in _COMPOUND:
        return True
    if s.count(b'"""') % 2 or s.count(b"'''") % 2:
        return True
    depth = 0
    quote = 0
    for b in s:
        if quote:
            if b == quote:
                quote = 0
        elif b in b"'\"":
            quote = b
        elif b in b"([{":
            depth += 1
        elif b in b")]}":
            depth -= 1
        elif b == ord("#"):
            break
    return depth > 0


def _take_frame(buf: bytearray) -> tuple[bytes, int, bytes, bytes] | None:
    """One complete "S" or "D" frame from the agent, removed from `buf`; None if incomplete."""
    if len(buf) < 5:
        return None
    tag = bytes(buf[:1])
    fid = struct.unpack(">I", buf[1:5])[0]
    if tag == b"S":
        del buf[:5]
        return tag, fid, b"", b""
    if tag != b"D":
        raise CommandError(f"vboard: the MicroPython agent sent an unknown frame {bytes(buf[:16])!r}")
    if len(buf) < 10:
        return None
    n = struct.unpack(">I", buf[6:10])[0]
    if len(buf) < 10 + n:
        return None
    status, text = bytes(buf[5:6]), bytes(buf[10:10 + n])
    del buf[:10 + n]
    return tag, fid, status, text


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _read_now(fd: int) -> str:
    try:
        return os.read(fd, 65536).decode(errors="replace")
    except OSError:
        return ""


def _child_setup() -> None:
    """In the child before exec: Ctrl-C's SIGINT must reach MicroPython even if the vboard was started with it
    ignored (a background job), and the child gets SIGKILL when the vboard dies, so none is left behind."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes

        if sys.platform == "linux":
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# -- the command


def args_vboard(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", metavar="DIR", default=None,
                        help="the board's folder: DIR/flash is its file system, DIR/port links to its serial port "
                             "(default: HOME/vboard)")
    parser.add_argument("--heap", metavar="SIZE", type=_heap, default=DEFAULT_HEAP,
                        help=f"MicroPython heap, like a small board's (default {DEFAULT_HEAP})")
    parser.add_argument("--baud", metavar="N", type=_baud, default=None,
                        help="read input at a serial line's rate, e.g. 115200 (default: as fast as it comes)")
    parser.add_argument("--reset-on-open", action="store_true",
                        help="hard-reset when a program opens the port, as boards with a USB-UART bridge do")


def do_vboard(state: State, args: argparse.Namespace) -> int:
    """Run a virtual board until Ctrl-C."""
    from ndn_edge.tools import micropython as mp
    from ndn_edge.tools.output import in_background

    micropython = mp.require("micropython", "vboard")
    folder = Path(args.dir).expanduser() if args.dir else state.home.path / "vboard"
    state.close()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"vboard: --dir {args.dir} is a file, not a folder; pass a folder (it is created if "
                         "missing)")
    background = in_background(sys.stdout)
    board = VirtualBoard(folder, micropython=micropython, heap=args.heap, baud=args.baud,
                         reset_on_open=args.reset_on_open)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
    signal.signal(signal.SIGINT, lambda *_: board.stop())
    signal.signal(signal.SIGTERM, lambda *_: board.stop())
    signal.signal(signal.SIGHUP, lambda *_: board.stop())
    signal.signal(signal.SIGUSR1, lambda *_: board.hard_reset())
    with contextlib.ExitStack() as stack:
        try:
            path = board.open()
            print(f"ndn-edge vboard: serial port {path} (stable link: {board.link}); try: "
                  f"ndn-edge provision --port {board.link} --name lab/v1 --app examples/thermostat.py", flush=True)
            print("ndn-edge vboard: Ctrl-C to stop; `kill -USR1 <pid>` presses the reset button", flush=True)
            if background:
                board.log = stack.enter_context(open(board.folder / LOG_FILE, "a", buffering=1))
                print(f"ndn-edge vboard: in the background; what it does next is logged to "
                      f"{board.folder / LOG_FILE}", flush=True)
            board.serve()
        finally:
            board.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    print("ndn-edge vboard: stopped", flush=True)
    return 0


def _heap(text: str) -> str:
    if not _HEAP.fullmatch(text):
        raise argparse.ArgumentTypeError(f"heap must be a size such as 64K or 1M, got {text!r}")
    return text.upper()


def heap_bytes(heap: str) -> int:
    """A heap size as `-X heapsize=` takes it ("96K", "1M", "65536") in bytes."""
    unit = {"K": 1024, "M": 1024 * 1024}.get(heap[-1:].upper(), 1)
    return int(heap[:-1] if unit > 1 else heap) * unit


def _baud(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 300 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"baud must be 300 to 10000000, got {text!r}")
    return value
