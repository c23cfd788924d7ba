# The ndn-edge runtime for a MicroPython firmware image: include() this from a board's manifest
# (firmware/boards/*/manifest.py do) and build with FROZEN_MANIFEST pointing at that board manifest.
# Frozen modules are imported from flash without using the heap for their code, and load before
# anything in /lib: a board with this firmware needs only its app and ndn_config.json.
#
# The runtime needs no micropython-lib package: asyncio, socket, hashlib, cryptolib, struct,
# binascii and json are built into the esp32 and rp2 ports (asyncio is frozen by their own manifests,
# which the board manifests include first).
package("device", base_path="..")
module("ndn_boot.py", base_path="../tools/onboard")
