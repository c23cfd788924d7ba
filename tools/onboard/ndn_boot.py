# Board start-up helpers installed by `ndn-edge deploy` (lib/ndn_boot): Wi-Fi from ndn_config.json.
# boot.py calls start_network() (returns at once); main.py calls wait_network() before the app.
# On ports without a `network` module (the unix port, a vboard) both do nothing.
import json

_CONFIG = "ndn_config.json"
_STAT_CONNECTING = 1001  # network.STAT_CONNECTING on ESP32 and RP2


def _wifi():
    try:
        with open(_CONFIG) as f:
            wifi = json.load(f).get("wifi")
    except (OSError, ValueError):
        return None
    return wifi if isinstance(wifi, dict) and wifi.get("ssid") else None


def start_network():
    # Start joining the configured Wi-Fi; returns the interface, or None without Wi-Fi.
    wifi = _wifi()
    if wifi is None:
        return None
    try:
        import network
    except ImportError:
        return None
    sta = network.WLAN(network.STA_IF)
    sta.active(True)
    # A second connect() while one is in progress fails on ESP32 ("Wifi Internal State Error").
    if not sta.isconnected() and sta.status() != getattr(network, "STAT_CONNECTING", _STAT_CONNECTING):
        sta.connect(wifi["ssid"], wifi.get("password") or "")
    return sta


def wait_network(timeout_ms=30000):
    # Block until Wi-Fi is up (or there is none to wait for); OSError after timeout_ms.
    import time
    sta = start_network()
    if sta is None:
        return None
    start = time.ticks_ms()
    while not sta.isconnected():
        if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
            raise OSError("Wi-Fi %r not connected after %d ms (status %r)" % (
                _wifi()["ssid"], timeout_ms, sta.status()))
        time.sleep_ms(100)
    print("ndn-edge: Wi-Fi up,", sta.ifconfig()[0])
    return sta
