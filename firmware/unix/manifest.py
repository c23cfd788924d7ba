# The MicroPython unix port with the ndn-edge runtime frozen in, as a production board carries it: for
# measuring the device targets that way (`python -m bench device --frozen`, firmware/README.md). It keeps
# what the standard variant freezes (asyncio and the rest), then adds the runtime.
include("$(PORT_DIR)/variants/standard/manifest.py")
include("../manifest.py")
