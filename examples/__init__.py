# Example board apps, shipped as data with ndn-edge (ndn_edge.resources): sim_device.py runs `ndn-edge sim`.
