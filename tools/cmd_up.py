"""`ndn-edge up`: the whole system on one host, and a tour of it through the real client library.

In one process: the gateway for the home (started in-process, as `ndn-edge gateway` would run it), simulated
devices on MicroPython (`ndn_edge.tools.cmd_sim.SimFleet`, default 3), a client `demo` allowed everything and a client
`guest` allowed nothing (created when missing; `demo` is named the home's default client in `HOME/default-client`,
so `ndn-edge devices` works there without `--as`). Once the devices are discovered it prints real calls with what
they returned: the device list, services, a cached reading twice, echo, a non-idempotent counter, a denied call
and an error. Then it keeps running (other terminals can use the CLI against the same home) until Ctrl-C or
SIGTERM, or exits after the tour with `--once`.

Decisions:
- Check first, change nothing on refusal: a gateway already serving the home, a fleet already running there
  (`SimFleet.lock`), or a home holding other clients or devices (where a client allowed everything would be a
  surprise: asked on a terminal, `--yes` in scripts) are refused before anything is written. The gateway starts
  before the demo's clients and devices are recorded, so a gateway that cannot start plants nothing either.
- SIGTERM cancels the tour like Ctrl-C: the devices are stopped and `gateway.json` removed.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

from ndn_edge.tools.errors import EXIT_INTERRUPTED, EXIT_USAGE, CommandError

if TYPE_CHECKING:
    from ndn_edge.client.api import Client
    from ndn_edge.state.home import Home
    from ndn_edge.state.store import Store
    from ndn_edge.tools.cli import State
    from ndn_edge.tools.cmd_sim import SimFleet

DEMO_CLIENT = "demo"
GUEST_CLIENT = "guest"
_DISCOVERY_TIMEOUT_S = 30.0
_POLL_S = 0.2


def args_up(parser: argparse.ArgumentParser) -> None:
    from ndn_edge.tools.cmd_sim import _count, add_fleet_args
    from ndn_edge.tools.netargs import add_network_args, listen_arg

    parser.add_argument("--devices", metavar="N", type=_count, default=3, help="simulated devices (default 3)")
    add_fleet_args(parser)
    add_network_args(parser)
    parser.add_argument("--listen", metavar="HOST:PORT", type=listen_arg, default=("127.0.0.1", 0),
                        help="where clients reach the gateway (default 127.0.0.1:0, a free port)")
    parser.add_argument("--http", metavar="HOST:PORT", type=listen_arg, default=("127.0.0.1", 0),
                        help="where the REST API and the dashboard listen (default 127.0.0.1:0, a free port)")
    parser.add_argument("--once", action="store_true", help="exit after the tour instead of running until Ctrl-C")
    parser.add_argument("--yes", action="store_true",
                        help=f"add the client '{DEMO_CLIENT}' allowed to call everything even in a home that already "
                             "holds other clients or devices (else asked on a terminal, refused in scripts)")


def do_up(state: State, args: argparse.Namespace) -> int:
    """Start the gateway and simulated devices, show a tour, keep running (or exit with --once)."""
    from ndn_edge import logs
    from ndn_edge.daemon import run_loop
    from ndn_edge.tools.cmd_sim import SimFleet
    from ndn_edge.wire.protocol import DEFAULT_SITE

    home = state.home
    _refuse_running_gateway(home)
    store = state.store if home.db_path.exists() else None  # read only: a refused `up` creates nothing
    site = args.site or (store.get_meta("site") if store is not None else None) or DEFAULT_SITE
    fleet = SimFleet(home, count=args.devices, prefix=args.prefix, site=site, iface=args.iface,
                     group=args.group[0], port=args.group[1], loss=args.loss, heap=args.heap,
                     lease_ms=args.lease_ms, seed=args.seed)
    if store is not None:
        _confirm_demo_clients(store, fleet, home, args.yes)
    state.close()
    fleet.lock("up")
    handler = logs.setup("warning")  # the tour is the output; the gateway only speaks up about problems
    try:
        run_loop(_up(state, args, fleet, site))
    except asyncio.CancelledError:  # SIGTERM (see _up): stopped like Ctrl-C
        return EXIT_INTERRUPTED
    finally:
        fleet.stop()
        logs.teardown(handler)
    return 0


async def _up(state: State, args: argparse.Namespace, fleet: SimFleet, site: str) -> None:
    from ndn_edge import __version__
    from ndn_edge.client.api import Client
    from ndn_edge.daemon import Gateway
    from ndn_edge.tools.cmd_sim import _loss_text
    from ndn_edge.tools.procs import cancel_on_sigterm
    from ndn_edge.tools.session import write_default_client

    cancel_on_sigterm()
    home = state.home
    from ndn_edge.http.options import HttpOptions

    gateway = Gateway(home, iface=args.iface, group=args.group[0], port=args.group[1], listen=args.listen, site=site,
                      http=HttpOptions(args.http))
    await gateway.start()
    try:
        _ensure_client(state, DEMO_CLIENT, site, grant="**")
        _ensure_client(state, GUEST_CLIENT, site, grant=None)
        write_default_client(home, DEMO_CLIENT)
        fleet.provision(state.store)
        state.close()
        host, port = gateway.address
        print(f"home       {home.path}")
        print(f"gateway    ndn-edge {__version__}, clients on {host}:{port}, "
              f"devices on {gateway.group}:{gateway.port} via {gateway.iface}, "
              f"site /{site}")
        _print_dashboard(gateway)
        how = fleet.start()
        print(f"devices    {' '.join(fleet.names)} on {how}{_loss_text(fleet)}")
        async with Client.connect(home=home, client=DEMO_CLIENT) as demo, \
                Client.connect(home=home, client=GUEST_CLIENT) as guest:
            elapsed = await _wait_for_devices(demo, fleet)
            print(f"discovery  {fleet.count} devices online after {elapsed:.1f} s\n")
            await _tour(demo, guest, fleet, state)
        if args.once:
            return
        hint = home.hint
        print(f"\nThe gateway keeps running; in another terminal try (as client {_default_client(home)}):")
        print(f"  {hint('ndn-edge devices')}")
        print(f"  {hint(f'ndn-edge call {_rel(fleet.names[0], site)}/temperature --json')}")
        grant = "ndn-edge acl grant alice 'sim/*/temperature'"
        print(f"  {hint('ndn-edge client add alice')}  then  {hint(grant)}")
        print("Ctrl-C to stop.", flush=True)
        await _watch(fleet)
    finally:
        fleet.stop()
        await gateway.stop()


def _print_dashboard(gateway: Any) -> None:
    """The dashboard's URL and a fresh token for the demo client (its earlier tokens are revoked)."""
    from ndn_edge.http import tokens

    if gateway.http is not None and gateway.store is not None:
        tokens.revoke(gateway.store, DEMO_CLIENT)
        token = tokens.issue(gateway.store, DEMO_CLIENT)
        print(f"dashboard  {gateway.http.url}/  sign in as {DEMO_CLIENT} with {token}")


async def _wait_for_devices(client: Client, fleet: SimFleet) -> float:
    """Seconds until every fleet device has announced itself and is described; CommandError at the deadline."""
    started = time.monotonic()
    booted = time.time() - 1.0  # announcements from this run, not presence left in the store by an earlier one
    deadline = started + _DISCOVERY_TIMEOUT_S
    wanted = set(fleet.names)
    online: set[str] = set()
    while True:
        online = {d["name"] async for d in client.iter_devices()
                  if d.get("state") == "online" and d.get("services") and (d.get("last_seen") or 0) >= booted}
        if wanted <= online:
            return time.monotonic() - started
        dead = fleet.exited()
        if dead:
            name, code = dead[0]
            raise CommandError(f"up: device {name} exited with code {code}; see "
                               f"{fleet.log_path(name)}")
        if time.monotonic() > deadline:
            missing = " ".join(sorted(wanted - online))
            raise CommandError(f"up: devices not discovered within {_DISCOVERY_TIMEOUT_S:.0f} s: {missing}; see the "
                               f"logs in {fleet.home.path / 'sim'}")
        await asyncio.sleep(_POLL_S)


async def _tour(demo: Client, guest: Client, fleet: SimFleet, state: State) -> None:
    from ndn_edge.errors import CallError
    from ndn_edge.tools.cmd_client import print_devices, print_services
    from ndn_edge.tools.output import value_text

    site = fleet.site
    first, second, third = (_rel(fleet.names[i % fleet.count], site) for i in range(3))
    print("$ ndn-edge devices --as demo")
    print_devices([d async for d in demo.iter_devices()])
    print(f"\n$ ndn-edge services {first} --as demo")
    print_services([{"device": fleet.names[0], "services": await demo.services(first)}])

    async def show(client: Client, name: str, args: dict[str, Any] | None = None,
                   note: str = "") -> None:
        shown = f" --args '{_json(args)}'" if args else ""
        print(f"\n$ ndn-edge call {name}{shown} --as {client.name}" + (f"    # {note}" if note else ""))
        t0 = time.perf_counter()
        try:
            result = await client.call_ex(name, args)
        except CallError as err:
            ms = (time.perf_counter() - t0) * 1000
            print(f"{err.code}: {err.message}    [{ms:.1f} ms, exit code {err.exit_code}]")
            return
        ms = (time.perf_counter() - t0) * 1000
        where = f"cached, {result.age_ms} ms old" if result.cached else "from the device"
        if result.stale:
            where += ", STALE"
        print(f"{value_text(result.value)}    [{where}, {ms:.1f} ms]")

    await show(demo, f"{first}/temperature", note="cacheable for 2 s: asks the device")
    await show(demo, f"{first}/temperature", note="again: served from the gateway's cache")
    await show(demo, f"{second}/echo", {"text": "hello", "n": 3})
    await show(demo, f"{third}/counter", note="not idempotent: runs once per call, retries included")
    await show(demo, f"{third}/counter")
    await show(guest, f"{first}/temperature", note="guest has no rules: denied")
    await show(demo, f"{first}/nope", note="no such service")

    from ndn_edge.tools.tour_patterns import tour_patterns
    await tour_patterns(demo, fleet)


async def _watch(fleet: SimFleet) -> None:
    reported: set[str] = set()
    while True:
        await asyncio.sleep(0.5)
        for name, code in fleet.exited():
            if name not in reported:
                reported.add(name)
                print(f"ndn-edge up: {name} exited with code {code}; see "
                      f"{fleet.log_path(name)}", file=sys.stderr, flush=True)


def _refuse_running_gateway(home: Home) -> None:
    """CommandError (exit status 2) if a gateway already serves `home`: `up` runs its own."""
    from ndn_edge.errors import ConfigError

    try:
        record = home.read_gateway_record()
    except ConfigError:
        return
    if record.pid_alive():
        raise CommandError(f"up: a gateway (pid {record.pid}) already serves home {home.path} at "
                           f"{record.host}:{record.port}; nothing was changed. Stop it first, or use another home "
                           "with --home DIR (python3 dev.py up uses its own)", exit_code=EXIT_USAGE)


def _confirm_demo_clients(store: Store, fleet: SimFleet, home: Home, yes: bool) -> None:
    """Ask before adding the demo's allow-everything client to a home that holds other clients or devices;
    CommandError (exit status 2) when the answer is no or cannot be asked."""
    if store.client(DEMO_CLIENT) is not None and any(r.pattern == "**" for r in store.rules(DEMO_CLIENT)):
        return  # nothing new: the demo ran here before
    others = [c.name for c in store.list_clients() if c.name not in (DEMO_CLIENT, GUEST_CLIENT)]
    mine = f"/{fleet.site}/{fleet.prefix}/"
    devices = [row[0] for row in store.query("SELECT name FROM devices WHERE substr(name, 1, ?) != ? ORDER BY name "
                                             "LIMIT 4", (len(mine), mine))]
    if not others and not devices:
        return
    held = " and ".join(_some(kind, names) for kind, names in (("client", others), ("device", devices)) if names)
    why = (f"home {home.path} already holds {held}; the demo would add client '{DEMO_CLIENT}' allowed to call "
           "everything there")
    if yes:
        return
    if sys.stdin.isatty():
        try:
            answer = input(f"{why}. Add it? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() in ("y", "yes"):
            return
        raise CommandError("up: nothing was changed; run the demo in another home with --home DIR (python3 dev.py up "
                           "uses its own)", exit_code=EXIT_USAGE)
    raise CommandError(f"up: {why}; nothing was changed. Pass --yes to add it, or use another home with --home DIR "
                       "(python3 dev.py up uses its own)", exit_code=EXIT_USAGE)


def _some(kind: str, names: list[str]) -> str:
    """"clients a, b, c ..." (at most three names)."""
    return f"{kind}{'s' if len(names) > 1 else ''} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


def _default_client(home: Home) -> str:
    from ndn_edge.client.api import resolve_client_name
    from ndn_edge.errors import ConfigError

    try:
        return resolve_client_name(home, None)
    except ConfigError:  # only for a hint
        return DEMO_CLIENT


def _ensure_client(state: State, name: str, site: str, *, grant: str | None) -> None:
    """Create client `name` (credentials file and store entry) unless both exist; grant `grant` if given."""
    import secrets

    store, home = state.store, state.home
    has_record = store.client(name) is not None
    has_file = home.client_file(name).exists()
    if has_record != has_file:
        raise CommandError(f"up: client '{name}' is only half there (store: {has_record}, credentials file: "
                           f"{has_file}); remove it with: {home.hint(f'ndn-edge client remove {name}')}")
    if not has_record:
        key = secrets.token_bytes(32)
        store.add_client(name, key)
        try:
            home.write_client(name, key, site)
        except BaseException:
            store.remove_client(name)
            raise
    if grant is not None:
        store.grant(name, grant)


def _rel(full_name: str, site: str) -> str:
    prefix = f"/{site}/"
    return full_name[len(prefix):] if full_name.startswith(prefix) else full_name


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
