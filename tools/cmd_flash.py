"""`ndn-edge flash`: write MicroPython firmware to a board.

    ndn-edge flash --port /dev/ttyUSB0 --board esp32 ESP32_GENERIC-v1.24.1.bin
    ndn-edge flash --board rp2-pico-w RPI_PICO_W-v1.24.1.uf2          # board held in BOOTSEL, or --port

ESP32 boards are written by esptool (the `flash` extra: pip install 'ndn-edge[flash]'), run as its documented
command line, `python -m esptool --chip CHIP --port PORT --baud BAUD erase-flash`, then `... write-flash -z
OFFSET FIRMWARE` (0x1000 for the ESP32, 0x0 for the ESP32-S3; older esptool spells the commands with `_`).
RP2040 boards are written by copying the `.uf2` to their RPI-RP2 USB drive: with `--port` a running
MicroPython is asked to reboot into it (`machine.bootloader()`), else the user holds BOOTSEL while plugging in;
the drive is waited for (bounded), found under the usual mount points or at `--mount DIR`.

Board profiles (chip, offset, UF2 family, where to download firmware) are `firmware/boards/*/profile.json`.
Before anything touches a board, the file is checked to be firmware for that board: an ESP image starts with
0xE9 and names its chip in its extended header (ESP32 0, ESP32-S3 9); every 512-byte UF2 block carries the
magics 0x0A324655, 0x9E5D5157 and 0x0AB16F30 and, here, the RP2040 family id. `--dry-run` prints what would run.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ndn_edge.tools.errors import CommandError

if TYPE_CHECKING:
    from ndn_edge.tools.cli import State

BOARDS = ("esp32", "esp32s3", "rp2-pico-w")
ESP_IMAGE_MAGIC = 0xE9
ESP_CHIP_ID_OFFSET = 12  # esp_image_header_t: magic, segments, flash mode, size/freq, entry(4), wp pin, drv(3)
ESP_CHIP_NAMES = {0x0000: "ESP32", 0x0002: "ESP32-S2", 0x0005: "ESP32-C3", 0x0009: "ESP32-S3",
                  0x000C: "ESP32-C2", 0x000D: "ESP32-C6", 0x0010: "ESP32-H2", 0x0012: "ESP32-P4"}
UF2_BLOCK = 512
UF2_MAGIC_START0 = 0x0A324655
UF2_MAGIC_START1 = 0x9E5D5157
UF2_MAGIC_END = 0x0AB16F30
UF2_FLAG_FAMILY = 0x00002000
UF2_FAMILIES = {0xE48BFF56: "RP2040", 0xE48BFF59: "RP2350 (ARM)", 0xE48BFF5A: "RP2350 (RISC-V)",
                0xE48BFF57: "RP2350 (absolute)", 0xE48BFF5B: "RP2350 (ARM, non-secure)"}
ELF_MAGIC = b"\x7fELF"
MAX_FIRMWARE_BYTES = 16 * 1024 * 1024
INFO_UF2 = "INFO_UF2.TXT"
DEFAULT_WAIT_S = 60.0
_POLL_S = 0.2


@dataclass(frozen=True)
class Profile:
    """How to flash one kind of board (firmware/boards/NAME/profile.json)."""

    board: str
    method: str  # "esptool" or "uf2"
    micropython_board: str
    firmware_url: str
    chip: str = ""
    esp_chip_id: int = 0
    offset: str = ""
    baud: int = 460800
    uf2_family: int = 0
    volume: str = ""

    @property
    def suffix(self) -> str:
        return ".uf2" if self.method == "uf2" else ".bin"


def load_profile(board: str) -> Profile:
    """The profile of `board`; CommandError if unknown or missing."""
    from ndn_edge import resources

    path = resources.folder("firmware") / "boards" / board / "profile.json"
    try:
        obj: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise CommandError(f"flash: no profile for board {board!r} ({path} is missing); boards: "
                           f"{', '.join(BOARDS)}") from None
    except ValueError as err:
        raise CommandError(f"flash: board profile {path} is damaged: {err}") from None
    family = obj.get("uf2_family", 0)
    return Profile(board=obj["board"], method=obj["method"], micropython_board=obj["micropython_board"],
                   firmware_url=obj.get("firmware_url", ""), chip=obj.get("chip", ""),
                   esp_chip_id=int(obj.get("esp_chip_id", 0)), offset=obj.get("offset", ""),
                   baud=int(obj.get("baud", 460800)),
                   uf2_family=int(family, 16) if isinstance(family, str) else int(family), volume=obj.get("volume", ""))


# -- firmware checks


def check_firmware(path: Path, profile: Profile) -> bytes:
    """The firmware's bytes if it is an image for `profile`'s board; CommandError saying why not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CommandError(f"flash: no such file {path}") from None
    except IsADirectoryError:
        raise CommandError(f"flash: {path} is a folder, not a firmware file") from None
    except OSError as err:
        raise CommandError(f"flash: cannot read {path}: {err.strerror}") from None
    if not data:
        raise CommandError(f"flash: {path} is empty")
    if len(data) > MAX_FIRMWARE_BYTES:
        raise CommandError(f"flash: {path} is {len(data)} bytes, more than any {profile.board} flash holds")
    kind = image_kind(data)
    hint = f"download the {profile.micropython_board} firmware ({profile.suffix}) from {profile.firmware_url}"
    if profile.method == "uf2":
        if kind != "uf2":
            raise CommandError(f"flash: {path} is {_kind_text(kind, data)}, not a UF2 image for {profile.board}; "
                               f"{hint}")
        check_uf2(data, path, profile)
    else:
        if kind != "esp":
            raise CommandError(f"flash: {path} is {_kind_text(kind, data)}, not an ESP firmware image for "
                               f"{profile.board}; {hint}")
        chip = struct.unpack_from("<H", data, ESP_CHIP_ID_OFFSET)[0] if len(data) >= 16 else -1
        if chip != profile.esp_chip_id:
            name = ESP_CHIP_NAMES.get(chip, f"chip id {chip}")
            raise CommandError(f"flash: {path} is firmware for {name}, not for {profile.board} "
                               f"({ESP_CHIP_NAMES.get(profile.esp_chip_id)}); {hint}")
    return data


def image_kind(data: bytes) -> str:
    """"esp", "uf2", "elf" or "unknown", from the first bytes."""
    if len(data) >= 8 and struct.unpack_from("<II", data) == (UF2_MAGIC_START0, UF2_MAGIC_START1):
        return "uf2"
    if data[:4] == ELF_MAGIC:
        return "elf"
    if data[0] == ESP_IMAGE_MAGIC:
        return "esp"
    return "unknown"


def check_uf2(data: bytes, path: Path, profile: Profile) -> None:
    """CommandError unless every block is a well-formed UF2 block of the profile's family."""
    if len(data) % UF2_BLOCK:
        raise CommandError(f"flash: {path} is {len(data)} bytes, not whole {UF2_BLOCK}-byte UF2 blocks "
                           "(truncated download?)")
    for index in range(len(data) // UF2_BLOCK):
        at = index * UF2_BLOCK
        start0, start1, flags = struct.unpack_from("<III", data, at)
        family = struct.unpack_from("<I", data, at + 28)[0]
        end = struct.unpack_from("<I", data, at + UF2_BLOCK - 4)[0]
        if (start0, start1, end) != (UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_MAGIC_END):
            raise CommandError(f"flash: {path} block {index} is not a UF2 block (bad magic); the file is damaged")
        if flags & UF2_FLAG_FAMILY and family != profile.uf2_family:
            name = UF2_FAMILIES.get(family, f"family 0x{family:08x}")
            raise CommandError(f"flash: {path} is firmware for {name}, not for {profile.board} "
                               f"({UF2_FAMILIES.get(profile.uf2_family)}); download the "
                               f"{profile.micropython_board} firmware from {profile.firmware_url}")


def _kind_text(kind: str, data: bytes) -> str:
    if kind == "uf2":
        return "a UF2 image (for drag-and-drop boards such as rp2-pico-w)"
    if kind == "esp":
        return "an ESP32 firmware image"
    if kind == "elf":
        return "an ELF file (use the build's firmware .bin/.uf2, not the .elf)"
    return f"not firmware (it starts with {data[:4].hex(' ')})"


# -- ESP32: esptool


def esptool_commands(profile: Profile, port: str, firmware: Path, *, baud: int | None = None, erase: bool = True,
                     esptool_major: int = 5) -> list[list[str]]:
    """The esptool command lines (after `python -m esptool`): erase, then write at the profile's offset."""
    base = ["--chip", profile.chip, "--port", port, "--baud", str(baud or profile.baud)]
    erase_cmd, write_cmd = ("erase-flash", "write-flash") if esptool_major >= 5 else ("erase_flash", "write_flash")
    commands = [[*base, erase_cmd]] if erase else []
    commands.append([*base, write_cmd, "-z", profile.offset, str(firmware)])
    return commands


def _esptool_major() -> int | None:
    from importlib import metadata

    try:
        return int(metadata.version("esptool").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def _flash_esp(profile: Profile, args: argparse.Namespace, firmware: Path) -> None:
    if not args.port:
        raise CommandError(f"flash: --board {profile.board} needs --port (the board's serial port)")
    major = _esptool_major()
    commands = esptool_commands(profile, args.port, firmware, baud=args.baud, erase=not args.no_erase,
                                esptool_major=major or 5)
    if args.dry_run:
        for command in commands:
            print(" ".join([sys.executable, "-m", "esptool", *command]))
        return
    _check_port(args.port)
    if major is None:
        raise CommandError("flash: esptool is not installed; install it with: pip install 'ndn-edge[flash]' "
                           "(or pip install esptool)")
    for command in commands:
        print(f"flash: esptool {' '.join(command)}", flush=True)
        _run_esptool(command)
    print(f"flash: done; {profile.board} on {args.port} restarts with MicroPython; next: ndn-edge provision --port "
          f"{args.port} --name NAME --app FILE", flush=True)


def _run_esptool(command: list[str]) -> None:
    """Run esptool with its output shown; CommandError with its last line if it fails."""
    proc = subprocess.Popen([sys.executable, "-m", "esptool", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    last = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.strip():
            last = line.strip()
    code = proc.wait()
    if code != 0:
        raise CommandError(f"flash: esptool failed (exit {code}): {last or 'no output'}; hold the board's BOOT "
                           "button while it connects if it does not enter its bootloader by itself")


def _check_port(port: str) -> None:
    """NoPort or PortBusy before esptool would say it less clearly."""
    from ndn_edge.tools.repl import Board

    board = Board(port)
    board.open()
    board.close()


# -- RP2040: UF2 drive


def uf2_mount_candidates(volume: str) -> list[Path]:
    """Where desktops mount a USB drive labelled `volume`."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    candidates = [Path("/media") / user / volume, Path("/run/media") / user / volume, Path("/media") / volume,
                  Path("/mnt") / volume, Path("/Volumes") / volume]
    for parent in (Path("/media"), Path("/run/media")):
        try:
            candidates += [p / volume for p in parent.iterdir() if p.is_dir()]
        except OSError:
            pass
    return list(dict.fromkeys(candidates))


def is_uf2_drive(path: Path, volume: str) -> bool:
    """True if `path` is the boot drive of an RP2 board (its INFO_UF2.TXT names the volume's board)."""
    try:
        info = (path / INFO_UF2).read_text(errors="replace")
    except OSError:
        return False
    return volume in info or "Board-ID: RPI-RP2" in info


def _find_drive(profile: Profile, mount: Path | None) -> Path | None:
    if mount is not None:
        return mount if is_uf2_drive(mount, profile.volume) else None
    return next((p for p in uf2_mount_candidates(profile.volume) if is_uf2_drive(p, profile.volume)), None)


def _flash_uf2(profile: Profile, args: argparse.Namespace, firmware: Path, data: bytes) -> None:
    mount = Path(args.mount).expanduser() if args.mount else None
    drive = _find_drive(profile, mount)
    if args.dry_run:
        where = drive or mount or f"the {profile.volume} drive (not mounted now)"
        print(f"copy {firmware} ({len(data)} bytes) to {where}/")
        return
    if drive is None:
        if args.port:
            _reboot_to_bootloader(args.port)
        else:
            print(f"flash: hold BOOTSEL while plugging in the board; waiting up to {args.wait:g} s for its "
                  f"{profile.volume} drive", flush=True)
        deadline = time.monotonic() + args.wait
        while drive is None:
            if time.monotonic() > deadline:
                where = f"at {mount}" if mount else "(looked in " + ", ".join(
                    str(p) for p in uf2_mount_candidates(profile.volume)[:3]) + ", ...)"
                raise CommandError(f"flash: no {profile.volume} drive {where} within {args.wait:g} s; hold BOOTSEL "
                                   "while plugging the board in, make sure the drive gets mounted, or pass "
                                   "--mount DIR")
            time.sleep(_POLL_S)  # polling the file system for a drive to appear
            drive = _find_drive(profile, mount)
    target = drive / firmware.name
    print(f"flash: copying {firmware.name} ({len(data)} bytes) to {drive}", flush=True)
    try:
        with open(target, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise CommandError(f"flash: copying to {drive} failed: {err.strerror or err}; unplug the board, hold "
                           "BOOTSEL, plug it in and run again") from None
    deadline = time.monotonic() + min(args.wait, 10.0)
    while is_uf2_drive(drive, profile.volume) and time.monotonic() < deadline:
        time.sleep(_POLL_S)  # the board reboots into the new firmware and its drive goes away
    if is_uf2_drive(drive, profile.volume):
        print(f"flash: note: {drive} is still there; the board reboots when the copy is complete", flush=True)
    print("flash: done; the board restarts with MicroPython; next: ndn-edge provision --port /dev/ttyACM0 "
          "--name NAME --app FILE", flush=True)


def _reboot_to_bootloader(port: str) -> None:
    """Ask MicroPython on `port` to reboot into the UF2 bootloader (the port then disappears)."""
    from ndn_edge.tools.repl import Board, ConnectionLost

    board = Board.connect(port, soft_reset=False)
    try:
        print(f"flash: asking the board on {port} to reboot into its bootloader", flush=True)
        try:
            board.exec("import machine\nmachine.bootloader()", timeout_s=2.0)
        except ConnectionLost:
            pass  # expected: the board drops off USB as it reboots
    finally:
        board.close()


# -- the command


def args_flash(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("firmware", metavar="FIRMWARE", help="the MicroPython firmware: .bin (ESP32) or .uf2 (RP2040)")
    parser.add_argument("--board", required=True, choices=BOARDS, help="the kind of board")
    parser.add_argument("--port", metavar="PORT", default=None,
                        help="serial port (required for ESP32 boards; for RP2040 boards, a running MicroPython is "
                             "asked to reboot into its bootloader)")
    parser.add_argument("--baud", metavar="N", type=int, default=None,
                        help="esptool's baud rate (default: the board profile's, 460800)")
    parser.add_argument("--no-erase", action="store_true", help="ESP32: write without erasing the flash first "
                                                                "(keeps files, may keep stale ones)")
    parser.add_argument("--mount", metavar="DIR", default=None, help="RP2040: where the RPI-RP2 drive is mounted")
    parser.add_argument("--wait", metavar="S", type=float, default=DEFAULT_WAIT_S,
                        help=f"RP2040: how long to wait for the drive (default {DEFAULT_WAIT_S:g} s)")
    parser.add_argument("--dry-run", action="store_true", help="check the file and print what would run")


def do_flash(state: State, args: argparse.Namespace) -> int:
    """Check the firmware, then write it with esptool or by UF2 copy."""
    state.close()
    profile = load_profile(args.board)
    firmware = Path(args.firmware).expanduser()
    data = check_firmware(firmware, profile)
    if profile.method == "esptool":
        _flash_esp(profile, args, firmware)
    else:
        _flash_uf2(profile, args, firmware, data)
    return 0
