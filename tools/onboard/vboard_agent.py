# The interpreter half of `ndn-edge vboard` (tools/vboard.py starts it): runs on the MicroPython unix
# port with the board's flash folder as its working directory, and executes what the vboard sends as if
# it had been typed at a board's REPL or found in boot.py / main.py.
#
#   micropython -X heapsize=64K vboard_agent.py CMD_FD REPLY_FD
#
# Frames in, on CMD_FD:    kind(1) id(4) len(4) body
#     kind b"x": exec body (file input, like the raw REPL), b"s": one friendly-REPL entry (prints
#     expression values), b"f": run the file named by body (boot.py, main.py) with __file__ set.
# Frames out, on REPLY_FD: b"H" len(4) text         once at start: "version|_mpy|platform|machine"
#                          b"S" id(4)               started: an interrupt (SIGINT) may come from now on
#                          b"D" id(4) status(1) len(4) text   done: status b"0" ok, b"E" exception (text
#                                                   is the traceback), b"X" SystemExit (board soft-resets)
# What the program prints goes to stdout as it prints it; frames never do, so nothing needs escaping.
#
# Interrupts: the vboard sends SIGINT only between "S" and "D", but one sent just before it read "D"
# lands after it, anywhere in this loop. Each frame is read as header then body, kept on an object so a
# KeyboardInterrupt between the two loses nothing; a "D" written twice (interrupt right after the write)
# is ignored by the vboard, which knows the id is finished.
import sys
import gc
import io
import struct

_NO_HEAP = b"MemoryError: (no heap left to format the traceback)\n"
_MAX_TEXT = 3000  # a "D" frame stays under PIPE_BUF, so it is written by one atomic write()


class _Reader:
    def __init__(self, f):
        self.f = f
        self.head = None

    def frame(self):
        if self.head is None:
            self.head = self.f.read(9)
        head = self.head
        if not head or len(head) < 9:
            return None  # the vboard is gone
        kind = head[:1]
        fid, n = struct.unpack(">II", head[1:])
        body = self.f.read(n) if n else b""
        self.head = None
        return kind, fid, body


def _traceback(exc, agent):
    gc.collect()  # the failed program's objects are garbage now; formatting needs a little heap
    try:
        buf = io.StringIO()
        sys.print_exception(exc, buf)
        # Drop this file's own frame: on a board the traceback starts at the user's code.
        lines = [l for l in buf.getvalue().split("\n") if agent not in l]
        text = "\n".join(lines).encode()
    except MemoryError:
        text = _NO_HEAP
    if len(text) > _MAX_TEXT:
        text = b"...\n" + text[-_MAX_TEXT:]
    return text


def _run(out, g, kind, fid, body, agent):
    status = b"0"
    text = b""
    try:
        out.write(b"S" + struct.pack(">I", fid))
        if kind == b"f":
            name = body.decode()
            with open(name) as f:
                src = f.read()
            g["__file__"] = name
            code = compile(src, name, "exec")
            src = None
        else:
            code = compile(body, "<stdin>", "single" if kind == b"s" else "exec")
        body = None
        exec(code, g)
    except SystemExit:
        status = b"X"
    except BaseException as e:  # the board prints every other exception, KeyboardInterrupt included
        status = b"E"
        text = _traceback(e, agent)
    return status, text


def _board_os(agent):
    # `import os` gives vboard_os (next to this file): the unix port's os with a board's ilistdir.
    sys.path[:] = [agent.rsplit("/", 1)[0] if "/" in agent else "."]
    import vboard_os
    sys.modules["os"] = vboard_os
    del sys.modules["vboard_os"]


def main():
    agent = __file__
    cmd = open(int(sys.argv[1]), "rb")
    out = open(int(sys.argv[2]), "wb")
    sys.argv[:] = []
    _board_os(agent)
    sys.path[:] = ["", ".frozen", "lib"]  # a board's path, relative to its flash folder (the cwd)
    g = {"__name__": "__main__"}
    impl = sys.implementation
    hello = "%s|%d|%s|%s" % (".".join(str(v) for v in impl.version[:3]) + (
        "-" + impl.version[3] if len(impl.version) > 3 and impl.version[3] else ""),
        getattr(impl, "_mpy", 0), sys.platform, getattr(impl, "_machine", ""))
    hello = hello.encode()
    out.write(b"H" + struct.pack(">I", len(hello)) + hello)
    reader = _Reader(cmd)
    while True:
        try:
            frame = reader.frame()
        except KeyboardInterrupt:
            continue  # a late interrupt of a finished job
        if frame is None:
            return
        kind, fid, body = frame
        frame = None
        try:
            status, text = _run(out, g, kind, fid, body, agent)
        except KeyboardInterrupt:  # landed while the exception was being formatted
            status, text = b"E", b"KeyboardInterrupt: \n"
        body = None
        done = b"D" + struct.pack(">I", fid) + status + struct.pack(">I", len(text)) + text
        while True:
            try:
                out.write(done)
                break
            except KeyboardInterrupt:
                pass


main()
