# The ndn-edge runtime for a MicroPython firmware image: include() this from a board's manifest
# (firmware/boards/*/manifest.py do) and build with FROZEN_MANIFEST pointing at that board manifest.
# Frozen modules are imported from flash without using the heap for their code, and load before
# anything in /lib: a board with this firmware needs only its app and ndn_config.json.
#
# The runtime needs no micropython-lib package: asyncio, socket, hashlib, cryptolib, struct,
# binascii and json are built into the esp32 and rp2 ports (asyncio is frozen by their own manifests,
# which the board manifests include first).
#
# The files are listed, not globbed: a board gets exactly the runtime's modules, never the host-only
# device/_cpython.py (tests/test_boards.py checks the list against device/).
metadata(version="0.2.0", description="ndn-edge board runtime: signed NDN services over UDP multicast")
package("device", files=("__init__.py", "aio.py", "cbor.py", "control.py", "errors.py", "manage.py", "net.py",
                         "netopen.py", "ops.py", "outbox.py", "port.py", "rare.py", "replay.py", "report.py",
                         "runtime.py", "seal.py", "sign.py", "tlv.py"), base_path="..")
module("ndn_boot.py", base_path="../tools/onboard")
