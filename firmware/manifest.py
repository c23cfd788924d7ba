# The ndn-edge runtime for a MicroPython firmware image: include() this from a board's manifest
# (firmware/boards/*/manifest.py do) and build with FROZEN_MANIFEST pointing at that board manifest.
# Frozen modules are imported from flash without using the heap for their code, and load before
# anything in /lib: a board with this firmware needs only its app and ndn_config.json.
#
# The runtime needs no micropython-lib package: asyncio, socket, hashlib, cryptolib, struct,
# binascii and json are built into the esp32 and rp2 ports (asyncio is frozen by their own manifests,
# which the board manifests include first).
#
# Paths are relative to this folder, which holds in the repository (firmware/ beside device/ and tools/)
# and in an installed wheel (ndn_edge/firmware beside ndn_edge/device and ndn_edge/tools).


def _version():
    # ndn_edge.__version__, its one source: gateway/__init__.py in the repository, ndn_edge/__init__.py
    # (this folder's parent) in an installed wheel.
    import re

    for init in ("../gateway/__init__.py", "../__init__.py"):
        try:
            with open(init) as f:
                found = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
        except OSError:
            continue
        if found:
            return found.group(1)
    raise OSError("ndn-edge's __version__ not found from firmware/manifest.py")


metadata(
    version=_version(),
    description="ndn-edge board runtime: signed NDN services over UDP multicast",
    license="MIT",
)

# Exactly the modules a board runs (the same files `ndn-edge deploy` copies): not device/_cpython.py,
# the CPython shims (ndn_edge.tools.micropython.HOST_ONLY). A new runtime module is added here too;
# tests/test_boards.py checks the list against device/.
package(
    "device",
    files=[
        "__init__.py",
        "aio.py",
        "cbor.py",
        "control.py",
        "derive.py",
        "errors.py",
        "log.py",
        "manage.py",
        "net.py",
        "netopen.py",
        "ops.py",
        "outbox.py",
        "port.py",
        "rare.py",
        "replay.py",
        "report.py",
        "runtime.py",
        "seal.py",
        "sign.py",
        "tlv.py",
    ],
    base_path="..",
)
module("ndn_boot.py", base_path="../tools/onboard")
