# ndn-edge board runtime: `from device import Device`.
#
# The data plane's modules are imported first and the heap collected before runtime.py is loaded: loading a .mpy
# leaves a hole wherever the loader's records of a function were (garbage once the module has run), and a
# collection lets the next module's code fill those holes instead of the free end of the heap, which Device()
# needs in one piece for its buffers (firmware/README.md "Memory").
from device import errors, port, cbor, tlv, sign, net, replay  # noqa: F401
port.collect()
from device.runtime import Device, ServiceError  # noqa: E402
from device.errors import DeviceError, MalformedError  # noqa: E402
