# main.py installed by `ndn-edge deploy`: waits for Wi-Fi, then runs the app ({source}, as {module}).
import ndn_boot
ndn_boot.wait_network()
import app
