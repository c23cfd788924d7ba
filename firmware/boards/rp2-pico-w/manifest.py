# RPI_PICO_W with the ndn-edge runtime frozen in (see firmware/README.md). The board's own manifest
# brings the port's modules plus its networking (CYW43 Wi-Fi) packages.
include("$(BOARD_DIR)/manifest.py")
include("../../manifest.py")
