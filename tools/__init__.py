"""Host-side tooling for ndn-edge boards and the `ndn-edge` command line (see tools/cli.py).

Imports nothing at import time: board tooling pulls in pyserial and friends only when a command needs them.
"""
