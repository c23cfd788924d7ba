# ndn-edge board runtime: `from device import Device`.
from device.runtime import Device, ServiceError
from device.errors import DeviceError, MalformedError
