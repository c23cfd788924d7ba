# `os` as the vboard agent gives it to code on a vboard (tools/onboard/vboard_agent.py installs it as
# sys.modules["os"]): the unix port's os, except that ilistdir yields (name, type, inode, size) as the
# file systems of boards (littlefs, FAT) do, where the unix port leaves the size out. mpremote's `ls`
# shows that size. Loaded with sys.path empty, so `from os import *` finds the built-in module.
from os import *  # noqa: F403
import os as _os


def _join(path, name):
    # str and bytes are never compared: MicroPython warns about that on stdout
    if isinstance(name, bytes):
        sep, here = b"/", b"."
    else:
        sep, here = "/", "."
    if not path or path == here:
        return name
    return path.rstrip(sep) + sep + name


def ilistdir(path="."):
    for e in _os.ilistdir(path):
        if len(e) > 3:
            yield e
            continue
        size = 0
        if not e[1] & 0x4000:  # a folder's size is 0 on a board too
            try:
                size = _os.stat(_join(path, e[0]))[6]
            except OSError:
                pass
        yield (e[0], e[1], e[2], size)
