"""Network options shared by `gateway`, `sim` and `up`: one builder, one parser per option, one set of defaults.

    --iface ADDR          interface address the multicast face joins and sends from (default 127.0.0.1)
    --group ADDR:PORT     multicast group and UDP port of the devices (default 224.0.23.170:56363)
    --site NAME           the first name component of every device and of the gateway (default edge)

Light to import (argparse only): `ndn_edge.tools.cli` loads argument builders for every command at start-up.
"""
from __future__ import annotations

import argparse
import ipaddress

from ndn_edge.wire.protocol import DEFAULT_GROUP, DEFAULT_IFACE, DEFAULT_PORT, DEFAULT_SITE


def add_network_args(parser: argparse.ArgumentParser, *, site: bool = True) -> None:
    """Add --iface, --group (and --site) to a command's parser."""
    parser.add_argument("--iface", metavar="ADDR", type=iface_arg, default=DEFAULT_IFACE,
                        help=f"IPv4 address of the interface for multicast (default {DEFAULT_IFACE}: this host only)")
    parser.add_argument("--group", metavar="ADDR:PORT", type=group_arg,
                        default=(DEFAULT_GROUP, DEFAULT_PORT),
                        help=f"multicast group and port of the devices (default {DEFAULT_GROUP}:{DEFAULT_PORT})")
    if site:
        parser.add_argument("--site", metavar="NAME", type=site_arg, default=None,
                            help=f"site name, the first component of device names (default: the home's, "
                                 f"else {DEFAULT_SITE})")


def iface_arg(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"interface must be an IPv4 address such as 127.0.0.1, got {text!r}") \
            from None


def group_arg(text: str) -> tuple[str, int]:
    addr, sep, port = text.rpartition(":")
    if not sep:
        addr, port = text, str(DEFAULT_PORT)
    try:
        group = ipaddress.IPv4Address(addr)
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"group must be ADDR:PORT such as {DEFAULT_GROUP}:{DEFAULT_PORT}, "
                                         f"got {text!r}") from None
    if not group.is_multicast:
        raise argparse.ArgumentTypeError(f"{addr} is not a multicast address (224.0.0.0/4)")
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"port {number} is outside 1..65535")
    return str(group), number


def listen_arg(text: str) -> tuple[str, int]:
    """HOST:PORT for the client face; PORT 0 picks a free port."""
    host, sep, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not host or not 0 <= number < 65536:
        raise argparse.ArgumentTypeError(f"listen address must be HOST:PORT such as 127.0.0.1:0, got {text!r}")
    return host.strip("[]"), number


def site_arg(text: str) -> str:
    site = text.strip("/")
    if not site or "/" in site:
        raise argparse.ArgumentTypeError(f"site must be one name component such as '{DEFAULT_SITE}', got {text!r}")
    return site
