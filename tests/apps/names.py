# A board app for argument names: a service without declared arguments, one that declares it takes none, and the
# free heap. Runs on MicroPython. argv: name key_hex port state_dir
import sys
import gc
from device import Device

dev = Device(sys.argv[1], sys.argv[2], iface="127.0.0.1", port=int(sys.argv[3]), state_dir=sys.argv[4])


@dev.service("free")
def free(**kw):
    return len(kw)


@dev.service("none", args={})
def none():
    return 0


@dev.service("heap", args={})
def heap():
    gc.collect()
    return gc.mem_free()


dev.run()
