# Firmware manifests and board profiles, shipped as data with ndn-edge (ndn_edge.resources); not imported.
