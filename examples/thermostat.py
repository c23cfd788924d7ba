# A thermostat board app: a cacheable reading, a command, and a slow reading.
# Runs unchanged on an ESP32 / Pico W (after `ndn-edge provision`) and on the unix port.
import asyncio
import time
from device import Device

dev = Device.from_config()  # ndn_config.json, written by `ndn-edge provision`
state = {"setpoint": 21.0}


@dev.service("temperature", cache_ms=2000, doc="Room temperature in degrees Celsius", result="float")
def temperature():
    # a reading that drifts slowly, as a real sensor would
    return round(20.0 + (time.time() % 60) / 30, 2)


@dev.service("setpoint", idempotent=False, args={"celsius": "float"}, result="float",
             doc="Set the target temperature; returns the new setpoint")
def setpoint(celsius=None):
    if celsius is not None:
        if not 5 <= celsius <= 30:
            raise ValueError("setpoint %s outside 5..30" % celsius)
        state["setpoint"] = float(celsius)
    return state["setpoint"]


@dev.service("humidity_avg", args={"samples": "int"}, result="float",
             doc="Average humidity over several slow samples (about 20 ms each)")
async def humidity_avg(samples=3):
    total = 0.0
    for i in range(samples):
        await asyncio.sleep(0.02)
        total += 40 + i
    return total / samples


dev.run()
