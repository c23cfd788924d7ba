# The device runtime's exceptions: one root, so an app can catch everything the runtime raises.


class DeviceError(Exception):
    pass


class MalformedError(DeviceError):
    # A packet or CBOR item that does not parse; the runtime drops and counts it.
    pass
