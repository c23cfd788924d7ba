"""Call-frame sizes of compiled MicroPython functions: which calls put their frame on the heap.

MicroPython keeps a call's state (arguments, locals, value stack, plus three words per active
exception handler) on the C stack when it fits in 11 words, and allocates it on the heap otherwise
(py/objfun.c, VM_MAX_STATE_ON_STACK); those allocations count in the per-call heap figure. This reads
the prelude of every function in a .mpy file (format v6, as mpy-cross 1.29 writes it) and reports
that state.

    python -m bench.frames device/runtime.py device/tlv.py   # compiles with mpy-cross, lists frames
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

STACK_WORDS = 11  # VM_MAX_STATE_ON_STACK / sizeof(mp_uint_t)
HANDLER_WORDS = 3  # sizeof(mp_exc_stack_t) / sizeof(mp_uint_t)


@dataclass
class Frame:
    path: str  # dotted: Class.method, or function.inner (names the firmware already has show as <static N>)
    n_state: int
    n_handlers: int
    bytecode: int  # bytes of the function's bytecode, prelude included

    @property
    def words(self) -> int:
        return self.n_state + HANDLER_WORDS * self.n_handlers

    @property
    def on_heap(self) -> bool:
        return self.words > STACK_WORDS


def _uint(data: bytes, i: int) -> tuple[int, int]:
    v = 0
    while True:
        c = data[i]
        i += 1
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            return v, i


OBJ_FLOAT = 8  # py/persistentcode.h MP_PERSISTENT_OBJ_FLOAT: a float constant, stored as its repr text


def _header(mpy: bytes) -> tuple[list[str], list[tuple[int, bytes]], int]:
    """The qstrs, the constant objects as (kind, payload) with tuples flattened, and the offset of the code."""
    if mpy[:2] != b"M\x06":
        raise ValueError("not a .mpy v6 file")
    i = 4
    n_qstr, i = _uint(mpy, i)
    n_obj, i = _uint(mpy, i)
    qstrs = []
    for _ in range(n_qstr):
        n, i = _uint(mpy, i)
        if n & 1:  # a qstr of the firmware's static table, by index
            qstrs.append(f"<static {n >> 1}>")
            continue
        qstrs.append(mpy[i:i + (n >> 1)].decode())
        i += (n >> 1) + 1
    objs: list[tuple[int, bytes]] = []

    def read_obj(i: int) -> int:
        kind = mpy[i]
        i += 1
        if kind <= 4:  # fun table, None, False, True, Ellipsis
            objs.append((kind, b""))
            return i
        if kind == 10:  # tuple
            n, i = _uint(mpy, i)
            for _ in range(n):
                i = read_obj(i)
            return i
        n, i = _uint(mpy, i)
        objs.append((kind, mpy[i:i + n]))
        return i + n + (1 if kind in (5, 6) else 0)  # str and bytes are NUL-terminated

    for _ in range(n_obj):
        i = read_obj(i)
    return qstrs, objs, i


def float_constants(mpy: bytes) -> list[str]:
    """The float constants of a .mpy (v6) file as the freezer writes them into C (their repr)."""
    return [payload.decode() for kind, payload in _header(mpy)[1] if kind == OBJ_FLOAT]


def frames(mpy: bytes) -> list[Frame]:
    """Every function in a .mpy (v6) file, depth first, with its frame size."""
    qstrs, _, i = _header(mpy)
    out: list[Frame] = []

    def raw_code(i: int, outer: str | None) -> int:
        kind_len, i = _uint(mpy, i)
        has_children, size = (kind_len >> 2) & 1, kind_len >> 3
        code = mpy[i:i + size]
        i += size
        # prelude signature (py/bc.h MP_BC_PRELUDE_SIG_DECODE): xSSSSEAA then xFSSKAED bytes
        z = code[0]
        j, n_state, n_exc, shift = 1, (z >> 3) & 0xF, (z >> 2) & 1, 0
        while z & 0x80:
            z = code[j]
            j += 1
            n_state |= (z & 0x30) << (2 * shift)
            n_exc |= (z & 0x02) << shift
            shift += 1
        # prelude size (xIIIIIIC bytes), then the function's name as a qstr index
        while code[j] & 0x80:
            j += 1
        name_index, _ = _uint(code, j + 1)
        name = qstrs[name_index] if name_index < len(qstrs) else "?"
        path = "<module>" if outer is None else f"{outer}.{name}" if outer else name
        out.append(Frame(path, n_state + 1, n_exc, size))
        if has_children:
            n, i = _uint(mpy, i)
            for _ in range(n):
                i = raw_code(i, "" if outer is None else path)
        return i

    raw_code(i, None)
    return out


def compile_frames(source: Path, mpy_cross: str) -> list[Frame]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mpy"
        subprocess.run([mpy_cross, "-o", str(out), str(source)], check=True, capture_output=True, timeout=60)
        return frames(out.read_bytes())


def main(argv: list[str]) -> int:
    from bench.mpy import find_tool
    mpy_cross = find_tool("mpy-cross")
    for source in argv:
        for f in compile_frames(Path(source), mpy_cross):
            flag = "heap" if f.on_heap else ""
            print(f"{Path(source).name:12} {f.path:40} {f.words:3} words  {f.bytecode:5} B  {flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
