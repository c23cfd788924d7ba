"""The transport to a MicroPython board: its raw REPL over a serial port (pyserial), and file operations on it.

    with Board.connect("/dev/ttyUSB0") as board:        # interrupts what runs, enters the raw REPL
        print(board.info())
        board.write_file("app.mpy", data)               # chunked, written to a temp name, verified, renamed
        board.reset()                                   # the board restarts and runs main.py

The board is driven by small Python snippets executed in the raw REPL (after mpremote's `transport.py`); a remote
traceback becomes a local `OSError` (errno and name as on the board, plus the path) or a `RemoteError` carrying
the board's last traceback line.

Decisions:
- Opening the port does not touch DTR/RTS beyond what pyserial and the OS do on open (both asserted, steady):
  a USB-UART board may still reset then, so entering the raw REPL retries, Ctrl-C twice each time (a program
  may catch the first), until a deadline, and a reset in the middle is survived.
- One error class per thing that went wrong, each a one-line message with the port and what to do: no such
  port, busy port, no answer / not MicroPython, garbage replies, lost connection or board reset mid-command.
- Writes go to `PATH.ndn-tmp`, are checked by SHA-256 on the board, then renamed over PATH: a copy cut by a
  reset or an unplugged cable leaves the old file (or none) and a temp file that the next deploy removes.
- Raw-paste mode (flow-controlled by the board) when offered, the classic raw mode with paced writes otherwise.
- Everything the board sends is kept in one receive buffer; reads take exactly up to a terminator, so replies
  never run into each other.
"""
from __future__ import annotations

import ast
import base64
import errno as errno_mod
import hashlib
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ndn_edge.tools.errors import ToolsError

CTRL_A, CTRL_B, CTRL_C, CTRL_D = b"\x01", b"\x02", b"\x03", b"\x04"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
RAW_PROMPT = RAW_BANNER + b">"
SOFT_REBOOT = b"soft reboot\r\n"
FRIENDLY_PROMPT = b">>> "
PASTE_ENTER = b"\x05A\x01"
TEMP_SUFFIX = ".ndn-tmp"
DEFAULT_BAUD = 115200
CONNECT_TIMEOUT_S = 10.0
EXEC_TIMEOUT_S = 10.0
CHUNK_BYTES = 1024  # file data per command; its base64 text must fit a small board's heap comfortably
_ATTEMPT_S = 1.0  # one try at entering the raw REPL
_SETTLE_S = 0.15  # after Ctrl-C, for an interrupted program to stop and print
_CLASSIC_PIECE = 256  # classic raw mode: bytes per write, then a pause (a board's stdin buffer is small)
_CLASSIC_PAUSE_S = 0.01
_MAX_SHOWN = 60  # bytes of unexpected output quoted in an error
# What a board prints when it (re)starts; seen where a reply was expected, it means the board reset.
_RESET_MARKERS = (b"soft reboot", b"rst:0x", b"vboard: hard reset", b"MicroPython v", RAW_BANNER)
_MICROPYTHON_MARKERS = (b"MicroPython", b">>> ", b"Traceback (most recent call last)", b"raw REPL",
                        b"KeyboardInterrupt")
_OSERROR = re.compile(r"OSError: (?:\[Errno (\d+)\] ?(\w*)|(-?\d+))")


# -- errors


class BoardError(ToolsError):
    """Root of the errors talking to a board."""


class NoPort(BoardError):
    """The port does not exist."""


class PortBusy(BoardError):
    """Another program has the port open, or we may not open it."""


class NoRepl(BoardError):
    """Nothing, or something other than MicroPython, answers on the port."""


class BadReply(BoardError):
    """The board answered outside the raw REPL protocol."""


class ConnectionLost(BoardError):
    """The port went away, or the board reset, in the middle of a command."""


class RemoteError(BoardError):
    """Code on the board raised an exception other than OSError; `traceback` holds the board's text."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


class _Timeout(Exception):
    def __init__(self, data: bytes) -> None:
        super().__init__("timeout")
        self.data = data


# -- what a board says about itself


@dataclass(frozen=True)
class BoardInfo:
    """The board's interpreter, bytecode version, free heap and flash, and whether it has Wi-Fi."""

    implementation: str
    version: str
    mpy: int  # sys.implementation._mpy: bytecode version | sub-version << 8 | native arch << 10; 0 if unknown
    platform: str
    network: bool
    heap_free: int
    machine: str
    flash_free: int
    flash_total: int
    runtime_file: str  # where `import device` comes from ("" if nowhere)

    @property
    def mpy_version(self) -> tuple[int, int]:
        """(major, sub) bytecode version of .mpy files the board loads; (0, 0) if it loads none."""
        return (self.mpy & 0xFF, (self.mpy >> 8) & 3) if self.mpy else (0, 0)

    @property
    def arch(self) -> str:
        """The native-code architecture name for `mpy-cross -march`, "" if none."""
        index = (self.mpy >> 10) & 0xF
        return _ARCHES[index] if self.mpy and index < len(_ARCHES) else ""

    @property
    def is_unix_port(self) -> bool:
        """True for the unix port (a vboard, or MicroPython on a host)."""
        return self.platform in ("linux", "darwin", "freebsd")

    @property
    def runtime_frozen(self) -> bool:
        """True if the firmware carries the runtime frozen in (it shadows copies in lib/)."""
        return self.runtime_file.startswith(".frozen")


_ARCHES = ("", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
           "xtensawin", "rv32imc", "rv64imc")

# Where module n is imported from: ".frozen/n" when the firmware carries it frozen in (found with sys.path
# holding only ".frozen": a frozen module's __file__ is its source name, like a copy's in lib/), else its
# __file__, else "" when it does not import. Unloads it again either way.
SOURCE_OF_SNIPPET = """\
import sys
def _src(n):
 def _drop():
  for k in [k for k in sys.modules if k==n or k.startswith(n+'.')]:
   del sys.modules[k]
 p=sys.path[:]
 sys.path[:]=['.frozen']
 try:
  __import__(n)
  f='.frozen/'+n
 except Exception:
  f=''
 sys.path[:]=p
 _drop()
 if not f:
  try:
   f=getattr(__import__(n),'__file__','?')
  except Exception:
   f=''
  _drop()
 return f
"""

_INFO_SNIPPET = SOURCE_OF_SNIPPET + """\
import os,gc
try:
 import network
 _n=True
except ImportError:
 _n=False
_f=_src('device')
_i=sys.implementation
_s=os.statvfs(os.getcwd())
gc.collect()
print(repr((_i.name,'.'.join([str(v) for v in _i.version[:3]]),getattr(_i,'_mpy',0),sys.platform,_n,\
gc.mem_free(),getattr(_i,'_machine',''),_s[0]*_s[4],_s[0]*_s[2],_f)))
"""

_HASH_SNIPPET = """\
import hashlib,binascii
def _nh(p):
 try:
  f=open(p,'rb')
 except OSError:
  return '-'
 try:
  h=hashlib.sha256();b=bytearray(256);m=memoryview(b)
  while True:
   n=f.readinto(b)
   if not n:
    break
   h.update(m[:n])
  return binascii.hexlify(h.digest()).decode()
 except OSError:
  return '-'
 finally:
  f.close()
for _p in %r:
 print(_nh(_p))
"""

_LIST_SNIPPET = """\
import os
for _d in %r:
 try:
  _l=list(os.ilistdir(_d))
 except OSError:
  _l=[]
 for _e in _l:
  _p=_d+'/'+_e[0] if _d else _e[0]
  _t=_e[1]&0x4000
  print(repr(('d' if _t else 'f',0 if _t else os.stat(_p)[6],_p)))
"""

_MKDIR_SNIPPET = """\
import os
for _d in %r:
 try:
  os.mkdir(_d)
 except OSError as e:
  if e.errno!=17:
   raise
"""

_REMOVE_SNIPPET = """\
import os
for _p in %r:
 try:
  os.remove(_p)
 except OSError as e:
  if e.errno!=2:
   raise
"""

_RENAME_SNIPPET = """\
import os
try:
 os.rename(%(src)r,%(dst)r)
except OSError:
 os.remove(%(dst)r)
 os.rename(%(src)r,%(dst)r)
"""


class Board:
    """A MicroPython board in its raw REPL, over a serial port."""

    def __init__(self, port: str, *, baudrate: int = DEFAULT_BAUD, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 exec_timeout_s: float = EXEC_TIMEOUT_S) -> None:
        self.port = port
        self.baudrate = baudrate
        self.connect_timeout_s = connect_timeout_s
        self.exec_timeout_s = exec_timeout_s
        self._serial: Any = None
        self._rx = bytearray()
        self._use_paste = True
        self.in_raw = False

    @classmethod
    def connect(cls, port: str, *, soft_reset: bool = True, **kwargs: Any) -> Board:
        """Open `port`, interrupt what runs and enter the raw REPL (soft-resetting for a clean heap)."""
        board = cls(port, **kwargs)
        try:
            board.open()
            board.enter_raw(soft_reset=soft_reset)
        except BaseException:
            board.close()
            raise
        return board

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the port

    def open(self) -> None:
        """Open the serial port: NoPort, PortBusy or NoRepl (not a serial port) when it cannot be used."""
        import serial

        if not os.path.exists(self.port):
            raise NoPort(f"no such port {self.port}; list serial ports with: python -m serial.tools.list_ports")
        ser = serial.Serial()
        ser.port = self.port
        ser.baudrate = self.baudrate
        ser.timeout = 0.1
        ser.write_timeout = 5.0
        ser.exclusive = True  # a second program on the same port corrupts both conversations
        try:
            ser.open()
        except serial.SerialException as err:
            code = getattr(err, "errno", None)
            if code in (errno_mod.EBUSY, errno_mod.EAGAIN) or "lock" in str(err).lower():
                raise PortBusy(f"{self.port} is busy: another program has it open (mpremote, screen, a serial "
                               "monitor?); close it and try again") from None
            if code == errno_mod.EACCES:
                raise PortBusy(f"no permission to open {self.port}; on Linux add yourself to the port's group "
                               "(often `dialout`) and log in again") from None
            if code == errno_mod.ENOENT:
                raise NoPort(f"no such port {self.port}; list serial ports with: "
                             "python -m serial.tools.list_ports") from None
            raise NoRepl(f"cannot use {self.port} as a serial port: {err}") from None
        self._serial = ser
        self._rx.clear()

    def close(self) -> None:
        """Close the port (idempotent); the board keeps running what it runs."""
        ser, self._serial = self._serial, None
        self.in_raw = False
        if ser is not None:
            try:
                ser.close()
            except (OSError, ValueError):
                pass

    def _write(self, data: bytes) -> None:
        import serial

        if self._serial is None:
            raise ConnectionLost(f"the connection to {self.port} is closed")
        try:
            self._serial.write(data)
        except serial.SerialTimeoutException:
            raise ConnectionLost(f"{self.port} stopped accepting data (board hung or unplugged?); reset the board "
                                 "and run again") from None
        except (serial.SerialException, OSError) as err:
            raise ConnectionLost(f"lost the connection to {self.port} ({err}); reconnect the board and run "
                                 "again") from None

    def _fill(self, timeout_s: float) -> int:
        """Read what arrives within `timeout_s` (at least one byte if any) into the receive buffer."""
        import serial

        if self._serial is None:
            raise ConnectionLost(f"the connection to {self.port} is closed")
        try:
            self._serial.timeout = max(0.0, timeout_s)
            data = self._serial.read(1)
            if data:
                waiting = self._serial.in_waiting
                if waiting:
                    data += self._serial.read(waiting)
        except (serial.SerialException, OSError) as err:
            raise ConnectionLost(f"lost the connection to {self.port} ({err}); reconnect the board and run "
                                 "again") from None
        self._rx += data
        return len(data)

    def _waiting(self) -> int:
        """Bytes the port holds unread."""
        import serial

        try:
            return self._serial.in_waiting if self._serial is not None else 0
        except (serial.SerialException, OSError) as err:
            raise ConnectionLost(f"lost the connection to {self.port} ({err}); reconnect the board and run "
                                 "again") from None

    def _read_until(self, ending: bytes, timeout_s: float, *, watch_reset: bool = False) -> bytes:
        """Bytes up to and including `ending`; `_Timeout` with what came if it does not come in time."""
        deadline = time.monotonic() + timeout_s
        start = 0
        while True:
            at = self._rx.find(ending, start)
            if at >= 0:
                end = at + len(ending)
                data = bytes(self._rx[:end])
                del self._rx[:end]
                return data
            if watch_reset and any(m in self._rx for m in _RESET_MARKERS):
                data = bytes(self._rx)
                self._rx.clear()
                raise ConnectionLost(f"the board on {self.port} reset in the middle of a command "
                                     f"(it printed {_shown(data)}); run again")
            start = max(0, len(self._rx) - len(ending) + 1)
            left = deadline - time.monotonic()
            if left <= 0:
                data = bytes(self._rx)
                self._rx.clear()
                raise _Timeout(data)
            self._fill(min(left, 0.1))

    def _read_exact(self, n: int, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while len(self._rx) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._fill(min(left, 0.1))
        data = bytes(self._rx[:n])
        del self._rx[:n]
        return data

    def _drain(self, timeout_s: float) -> bytes:
        """Whatever the board prints within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._fill(min(left, 0.05))
        data = bytes(self._rx)
        self._rx.clear()
        return data

    # -- the raw REPL

    def enter_raw(self, *, soft_reset: bool = True) -> None:
        """Interrupt the running program and enter the raw REPL, retrying until the connect timeout.

        Survives a board that resets when the port opens (its boot output and the characters it missed are
        absorbed by the retries). With `soft_reset`, the board then restarts its interpreter in raw mode (boot.py
        runs, main.py does not), so commands start from a clean heap.
        """
        deadline = time.monotonic() + self.connect_timeout_s
        heard = bytearray()
        while True:
            self._write(b"\r" + CTRL_C)
            heard += self._drain(_SETTLE_S / 2)
            self._write(CTRL_C)  # a program may catch the first KeyboardInterrupt
            heard += self._drain(_SETTLE_S)
            self._write(b"\r" + CTRL_A)
            try:
                self._read_until(RAW_PROMPT, min(_ATTEMPT_S, max(0.05, deadline - time.monotonic())))
                break
            except _Timeout as t:
                heard += t.data
            if time.monotonic() >= deadline:
                raise self._no_repl(bytes(heard))
        self.in_raw = True
        self._use_paste = True
        if soft_reset:
            self._write(CTRL_D)
            try:
                self._read_until(SOFT_REBOOT, self.exec_timeout_s)
                self._read_until(RAW_PROMPT, self.exec_timeout_s)
            except _Timeout as t:
                raise BadReply(f"the board on {self.port} did not come back from a soft reset within "
                               f"{self.exec_timeout_s:g} s (it printed {_shown(t.data)}); press its reset "
                               "button and run again") from None

    def _no_repl(self, heard: bytes) -> NoRepl:
        t = f"{self.connect_timeout_s:g} s"
        if not heard.strip(b"\r\n\x00"):
            return NoRepl(f"no answer on {self.port} within {t}: is the board plugged in and running MicroPython? "
                          "(a new board needs firmware: ndn-edge flash)")
        if any(m in heard for m in _MICROPYTHON_MARKERS):
            return NoRepl(f"MicroPython on {self.port} does not enter its raw REPL within {t} (a program that "
                          "catches Ctrl-C?); press the board's reset button and run again")
        return NoRepl(f"the device on {self.port} sends data but no MicroPython prompt within {t} (it sent "
                      f"{_shown(heard)}): not MicroPython, or a program that ignores Ctrl-C; check the port, press "
                      "the board's reset button, or flash MicroPython (ndn-edge flash)")

    def exec(self, code: str | bytes, *, timeout_s: float | None = None) -> bytes:
        """Run `code` on the board; returns what it printed. Its exception is raised here (see `RemoteError`)."""
        out, err = self.exec_raw(code, timeout_s=timeout_s)
        if err:
            raise remote_exception(err)
        return out

    def eval(self, code: str, *, timeout_s: float | None = None) -> Any:
        """Run `code`, which prints one Python literal, and return that value."""
        out = self.exec(code, timeout_s=timeout_s)
        try:
            return ast.literal_eval(out.decode().strip())
        except (ValueError, SyntaxError, UnicodeDecodeError):
            raise BadReply(f"garbage reply from the board on {self.port}: {_shown(out)} is not a Python "
                           "value") from None

    def exec_raw(self, code: str | bytes, *, timeout_s: float | None = None) -> tuple[bytes, bytes]:
        """Run `code`; returns (stdout, traceback text) with `\\r\\n` turned into `\\n`."""
        if not self.in_raw:
            raise BoardError(f"{self.port}: not in the raw REPL")
        data = code.encode() if isinstance(code, str) else bytes(code)
        timeout = self.exec_timeout_s if timeout_s is None else timeout_s
        if not (self._use_paste and self._paste(data)):
            self._classic(data)
        try:
            out = self._read_until(CTRL_D, timeout, watch_reset=True)[:-1]
            err = self._read_until(CTRL_D, timeout, watch_reset=True)[:-1]
            prompt = self._read_exact(1, timeout)
        except _Timeout as t:
            raise ConnectionLost(f"no reply from the board on {self.port} within {timeout:g} s (it printed "
                                 f"{_shown(t.data)}); it may be busy or have reset: run again") from None
        if prompt != b">":
            raise BadReply(f"garbage reply from the board on {self.port}: expected the raw prompt '>', got "
                           f"{_shown(prompt + self._drain(0.05))}")
        return out.replace(b"\r\n", b"\n"), err.replace(b"\r\n", b"\n")

    def _paste(self, data: bytes) -> bool:
        """Send `data` in raw-paste mode; False if the board does not offer it (then use the classic mode)."""
        self._write(PASTE_ENTER)
        answer = self._read_exact(2, self.exec_timeout_s)
        if answer == b"R\x00":  # understood, not supported; it prints a new prompt
            self._use_paste = False
            self._expect(b">", "the raw prompt")
            return False
        if answer != b"R\x01":
            if answer == RAW_BANNER[:2]:  # firmware older than raw-paste: Ctrl-A restarted the raw REPL
                self._use_paste = False
                try:
                    self._read_until(b"w REPL; CTRL-B to exit\r\n>", self.exec_timeout_s)
                except _Timeout as t:
                    raise BadReply(f"garbage reply from the board on {self.port}: {_shown(answer + t.data)}") \
                        from None
                return False
            self._raise_unexpected(answer, "the raw-paste answer R\\x01")
        header = self._read_exact(2, self.exec_timeout_s)
        if len(header) < 2:
            self._raise_unexpected(header, "the raw-paste window size")
        window = struct.unpack("<H", header)[0]
        if window == 0:
            raise BadReply(f"garbage reply from the board on {self.port}: raw-paste window of 0 bytes")
        remain = window
        view = memoryview(data)
        while view:
            while remain == 0 or self._rx or self._waiting():
                got = self._read_exact(1, self.exec_timeout_s)
                if got == b"\x01":
                    remain += window
                elif got == CTRL_D:  # the board ended the transfer (a syntax error, or Ctrl-C)
                    self._write(CTRL_D)
                    return True
                else:
                    self._raise_unexpected(got, "raw-paste flow control")
            piece = view[:remain]
            self._write(bytes(piece))
            remain -= len(piece)
            view = view[len(piece):]
        self._write(CTRL_D)
        try:
            ack = self._read_until(CTRL_D, self.exec_timeout_s, watch_reset=True)
        except _Timeout as t:
            raise ConnectionLost(f"the board on {self.port} did not acknowledge the end of the code within "
                                 f"{self.exec_timeout_s:g} s (it printed {_shown(t.data)}); run again") from None
        if ack.strip(b"\x01") != CTRL_D:  # window grants may still arrive before the acknowledgement
            self._raise_unexpected(ack, "the end-of-code acknowledgement")
        return True

    def _classic(self, data: bytes) -> None:
        for i in range(0, len(data), _CLASSIC_PIECE):
            self._write(data[i:i + _CLASSIC_PIECE])
            time.sleep(_CLASSIC_PAUSE_S)  # pacing: the board's stdin buffer holds a few hundred bytes
        self._write(CTRL_D)
        ok = self._read_exact(2, self.exec_timeout_s)
        if ok != b"OK":
            self._raise_unexpected(ok, "OK")

    def _expect(self, data: bytes, what: str) -> None:
        got = self._read_exact(len(data), self.exec_timeout_s)
        if got != data:
            self._raise_unexpected(got, what)

    def _raise_unexpected(self, got: bytes, what: str) -> None:
        more = got + self._drain(0.2)
        if any(m in more for m in _RESET_MARKERS):
            raise ConnectionLost(f"the board on {self.port} reset in the middle of a command (it printed "
                                 f"{_shown(more)}); run again")
        if not more:
            raise ConnectionLost(f"the board on {self.port} stopped answering (waiting for {what}); it may have "
                                 "reset or hung: run again")
        raise BadReply(f"garbage reply from the board on {self.port}: expected {what}, got {_shown(more)}")

    def leave_raw(self) -> None:
        """Back to the friendly REPL (`>>> `), without a reset."""
        self._write(b"\r" + CTRL_B)  # leave the raw REPL
        try:
            self._read_until(FRIENDLY_PROMPT, self.exec_timeout_s)
        except _Timeout as t:
            raise BadReply(f"the board on {self.port} did not leave the raw REPL (it printed {_shown(t.data)})") \
                from None
        self.in_raw = False

    def recover(self, timeout_s: float = 3.0) -> None:
        """Stop whatever the board runs (a command cut short by Ctrl-C, a raw-paste transfer, an app) and enter
        the raw REPL, without a reset, within about `timeout_s`; BoardError if it does not answer."""
        saved = self.connect_timeout_s
        self.connect_timeout_s = timeout_s
        self._rx.clear()
        try:
            self.enter_raw(soft_reset=False)
        finally:
            self.connect_timeout_s = saved

    def reset(self) -> None:
        """Soft-reset into the friendly REPL, so the board runs boot.py then main.py as after power-on."""
        self.leave_raw()
        self._write(CTRL_D)
        try:
            self._read_until(SOFT_REBOOT, self.exec_timeout_s)
        except _Timeout as t:
            raise BadReply(f"the board on {self.port} did not soft-reset (it printed {_shown(t.data)})") from None

    def read_output(self, timeout_s: float) -> bytes:
        """What the board prints within `timeout_s` (after `reset`, the output of boot.py and main.py)."""
        return self._drain(timeout_s).replace(b"\r\n", b"\n")

    # -- files (paths relative to the board's current folder, `/` after a reset)

    def info(self) -> BoardInfo:
        """What runs on the board; BadReply if the reply does not look like MicroPython's."""
        value = self.eval(_INFO_SNIPPET)
        if not (isinstance(value, tuple) and len(value) == 10):
            raise BadReply(f"garbage reply from the board on {self.port}: {value!r:.{_MAX_SHOWN}} is not board "
                           "information")
        name, version, mpy, platform, network, heap, machine, free, total, runtime = value
        return BoardInfo(str(name), str(version), int(mpy), str(platform), bool(network), int(heap), str(machine),
                         int(free), int(total), str(runtime))

    def sha256(self, paths: Sequence[str]) -> dict[str, str | None]:
        """SHA-256 (hex) of each file, None for a missing one."""
        if not paths:
            return {}
        lines = self.exec(_HASH_SNIPPET % (list(paths),)).decode(errors="replace").split()
        if len(lines) != len(paths) or not all(line == "-" or re.fullmatch(r"[0-9a-f]{64}", line) for line in lines):
            raise BadReply(f"garbage reply from the board on {self.port}: {_shown(' '.join(lines).encode())} is "
                           f"not {len(paths)} hashes")
        return {p: (None if h == "-" else h) for p, h in zip(paths, lines)}

    def listdir(self, folders: Iterable[str]) -> dict[str, int | None]:
        """Entries of `folders` (not recursive): path -> size for files, None for folders."""
        out = self.exec(_LIST_SNIPPET % (list(folders),)).decode(errors="replace")
        entries: dict[str, int | None] = {}
        for line in out.splitlines():
            try:
                kind, size, path = ast.literal_eval(line)
            except (ValueError, SyntaxError, TypeError):
                raise BadReply(f"garbage reply from the board on {self.port}: {_shown(line.encode())} is not a "
                               "folder entry") from None
            entries[str(path)] = None if kind == "d" else int(size)
        return entries

    def mkdir(self, folders: Sequence[str]) -> None:
        """Create folders (parents first, as given); existing ones are fine."""
        if folders:
            self.exec(_MKDIR_SNIPPET % (list(folders),))

    def remove(self, paths: Sequence[str]) -> None:
        """Delete files; missing ones are fine."""
        if paths:
            self.exec(_REMOVE_SNIPPET % (list(paths),))

    def write_file(self, path: str, data: bytes, *, progress: Callable[[int], None] | None = None,
                   chunk_bytes: int = CHUNK_BYTES) -> None:
        """Write `data` to `path` on the board: to a temp name in chunks, verified by SHA-256, then renamed."""
        tmp = path + TEMP_SUFFIX
        want = hashlib.sha256(data).hexdigest()
        try:
            self.exec(f"import binascii\n_nf=open({tmp!r},'wb')")
            for at in range(0, len(data), chunk_bytes):
                piece = base64.b64encode(data[at:at + chunk_bytes]).decode()
                self.exec(f"_nf.write(binascii.a2b_base64({piece!r}))")
                if progress is not None:
                    progress(min(at + chunk_bytes, len(data)))
            self.exec("_nf.close()\ndel _nf")
        except OSError as err:
            raise OSError(err.errno, err.strerror, path) from None
        got = self.sha256([tmp])[tmp]
        if got != want:
            raise BadReply(f"{path} on {self.port} does not verify after writing (SHA-256 {got or 'missing'}, "
                           f"expected {want}); run again")
        self.exec(_RENAME_SNIPPET % {"src": tmp, "dst": path})


def remote_exception(text: bytes) -> Exception:
    """The local exception for a traceback printed by the board: OSError with its errno, else RemoteError."""
    lines = [line.strip() for line in text.decode(errors="replace").splitlines() if line.strip()]
    last = lines[-1] if lines else "(no traceback)"
    match = _OSERROR.match(last)
    if match:
        number = int(match.group(1) or match.group(3))
        name = match.group(2) or errno_mod.errorcode.get(abs(number), "")
        return OSError(abs(number), f"{name or 'error'} on the board" if name else "error on the board")
    return RemoteError(f"the board raised {last}", text.decode(errors="replace"))


def _shown(data: bytes) -> str:
    """At most `_MAX_SHOWN` bytes of unexpected output, quoted for an error message."""
    text = repr(bytes(data[-_MAX_SHOWN:]))
    return ("..." if len(data) > _MAX_SHOWN else "") + text
