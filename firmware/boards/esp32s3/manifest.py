# ESP32_GENERIC_S3 with the ndn-edge runtime frozen in (see firmware/README.md).
include("$(PORT_DIR)/boards/manifest.py")
include("../../manifest.py")
