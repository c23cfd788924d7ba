"""Files ndn-edge ships that are not host code: the board runtime, firmware manifests and board profiles, the
simulated device, and the snippets run on boards. They are copied to boards, frozen into firmware or run by
MicroPython, never imported on the host.

    resources.folder("device")                  # .../ndn_edge/device: the runtime's *.py
    resources.folder("firmware") / "boards"
    resources.file("examples", "sim_device.py")

Decisions:
- Found through the import system (`importlib.util.find_spec`) without importing them: from a wheel they sit in
  site-packages under `ndn_edge/`, from a checkout the editable install maps them to the repository's folders
  (pyproject.toml `package-dir`). Importing `ndn_edge.device` on the host would run board code.
Rejected: paths relative to this file (they only hold in a checkout; a wheel broke `flash` and `sim`), and
`importlib.resources.files(...)` on these packages (it imports them).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ndn_edge.errors import ConfigError

KINDS = {"device": "ndn_edge.device", "firmware": "ndn_edge.firmware", "examples": "ndn_edge.examples",
         "onboard": "ndn_edge.tools.onboard"}


def folder(kind: str) -> Path:
    """The folder of shipped files of `kind` (device, firmware, examples, onboard)."""
    try:
        spec = importlib.util.find_spec(KINDS[kind])
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations:
        raise ConfigError(f"ndn-edge's {kind} files are missing from this installation; reinstall ndn-edge")
    return Path(locations[0])


def file(kind: str, name: str) -> Path:
    """One shipped file; ConfigError when it is missing."""
    path = folder(kind) / name
    if not path.is_file():
        raise ConfigError(f"ndn-edge's {kind}/{name} is missing from this installation; reinstall ndn-edge")
    return path
