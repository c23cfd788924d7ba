"""`ndn-edge federation init|join|status`: enrol homes in a federation of gateways over NATS
(docs/operations.md "More than one gateway").

    ndn-edge federation init --nats nats://127.0.0.1:4222      # in the first home: prints an enrolment token
    ndn-edge federation join TOKEN --home /srv/gw-b            # every other home
    ndn-edge federation status [--json]                        # gateways, devices they serve, NATS health

Decisions:
- `init` and `join` only write HOME/federation.json (0600); the gateway of an enrolled home joins when it starts
  (`ndn-edge gateway`, `--federation URL` to use other NATS addresses). `init` checks that NATS answers and makes
  the federation's buckets, so a mistyped address is found at once, not when the gateway starts.
- The token is printed once, to stdout only (`--json`: `{"token": ...}`); it holds the federation key.
- `status` reads what the home's running gateway wrote (HOME/federation.state.json) and, with the home's key,
  what NATS says about every gateway; it never needs the gateway to answer a request.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

from ndn_edge.tools.output import print_json, print_table

if TYPE_CHECKING:
    from ndn_edge.federation.config import FederationConfig
    from ndn_edge.tools.cli import State

CHECK_TIMEOUT_S = 5.0


def args_init(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats", metavar="URL", required=True,
                        help="the NATS cluster: nats://HOST:PORT[,nats://HOST:PORT...] (user:password@ where the "
                             "cluster asks for credentials)")
    parser.add_argument("--site", metavar="NAME", default=None, help="the site every gateway serves (default: "
                                                                     "this home's, else edge)")
    parser.add_argument("--no-check", action="store_true", help="do not connect to NATS now")
    parser.add_argument("--json", action="store_true", help='print {"token": ...} for scripts')


def args_join(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token", metavar="TOKEN", help="the enrolment token `federation init` printed")
    parser.add_argument("--json", action="store_true", help='print {"federation", "gateway", "site"} for scripts')


def args_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--timeout", metavar="S", type=float, default=3.0, help="how long to wait for NATS (3)")


def do_federation_init(state: State, args: argparse.Namespace) -> int:
    """Make a new federation with this home as its first gateway; print the enrolment token."""
    from ndn_edge.federation.config import new_config, parse_urls, read_config, token_of, write_config
    from ndn_edge.tools.errors import CommandError, UsageError

    try:
        urls = parse_urls(args.nats)
    except Exception as err:
        raise UsageError(f"federation init: {err}") from None
    if read_config(state.home.path) is not None:
        raise UsageError(f"federation init: home {state.home.path} is enrolled already; "
                         "`ndn-edge federation status` shows its federation")
    site = state.store.claim_site(args.site)
    config = new_config(site, urls)
    if not args.no_check:
        problem = _run(_check(config))
        if problem:
            raise CommandError(f"federation init: NATS at {args.nats} does not serve JetStream: {problem} "
                               "(start nats-server with JetStream, `nats-server -js`, or pass --no-check)")
    write_config(state.home.path, config)
    token = token_of(config)
    if args.json:
        print_json({"token": token})
    else:
        print(token)
        print(f"federation {config.federation} (site /{site}) made in {state.home.path}; this home's gateway is "
              f"{config.gateway}. Enrol another home with: ndn-edge federation join TOKEN --home DIR "
              "(the token holds the federation key: keep it secret)", file=sys.stderr)
    return 0


def do_federation_join(state: State, args: argparse.Namespace) -> int:
    """Enrol this home in the federation of TOKEN."""
    from ndn_edge.errors import ConfigError
    from ndn_edge.federation.config import config_from_token, read_config, write_config
    from ndn_edge.tools.errors import UsageError

    try:
        config = config_from_token(args.token)
    except ConfigError as err:
        raise UsageError(f"federation join: {err}") from None
    existing = read_config(state.home.path)
    if existing is not None:
        raise UsageError(f"federation join: home {state.home.path} is enrolled already (federation "
                         f"{existing.federation}); use another home with --home DIR")
    try:
        state.store.claim_site(config.site)
    except ConfigError as err:
        raise UsageError(f"federation join: {err}") from None
    write_config(state.home.path, config)
    if args.json:
        print_json({"federation": config.federation, "gateway": config.gateway, "site": config.site})
    else:
        print(f"home {state.home.path} joined federation {config.federation} as gateway {config.gateway}; start "
              "its gateway with: ndn-edge gateway")
    return 0


def do_federation_status(state: State, args: argparse.Namespace) -> int:
    """Show the federation of this home: its gateways, the devices they serve, NATS health."""
    from ndn_edge.federation.config import read_config, read_state
    from ndn_edge.tools.errors import UsageError

    config = read_config(state.home.path)
    if config is None:
        raise UsageError(f"federation status: home {state.home.path} is not enrolled in a federation; make one "
                         "with `ndn-edge federation init --nats URL`, or join one with `ndn-edge federation join "
                         "TOKEN`")
    local = read_state(state.home.path)
    view = _run(_view(config, max(0.1, args.timeout)))
    out = {"federation": config.federation, "site": config.site, "gateway": config.gateway,
           "local": local, **view}
    if args.json:
        print_json(out)
        return 0
    here = str(local.get("state")) if local else "not running"
    if local and local.get("server"):
        here += f", on NATS server {local['server']}"
    print(f"federation {config.federation}, site /{config.site}; this home's gateway {config.gateway}: {here}")
    nats = view["nats"]
    print(f"NATS: {'reachable' if nats.get('reachable') else 'unreachable'}"
          + (f", server {nats.get('server')}, {nats.get('cluster_size')} in cluster, JetStream "
             f"{'on' if nats.get('jetstream') else 'off'}" if nats.get("reachable") else f" ({nats.get('error')})"))
    for name, health in sorted((nats.get("buckets") or {}).items()):
        print(f"  {name}: leader {health.get('leader') or '?'}, {health.get('current')}/{health.get('replicas')} "
              f"replicas current, {health.get('messages')} values")
    rows = [(g["tag"], "yes" if g["alive"] else "no", g["devices"], g.get("listen") or "", g.get("home") or "")
            for g in sorted(view["gateways"], key=lambda g: g["tag"])]
    if rows:
        print_table(("GATEWAY", "ALIVE", "DEVICES", "CLIENTS ON", "HOME"), rows)
    for tag, devices in sorted(view["devices"].items()):
        shown = ", ".join(devices[:20]) + (f" and {len(devices) - 20} more" if len(devices) > 20 else "")
        print(f"gateway {tag} serves: {shown}")
    return 0


async def _check(config: FederationConfig) -> str | None:
    import nats

    try:
        nc = await nats.connect(list(config.nats), connect_timeout=2, max_reconnect_attempts=0,
                                allow_reconnect=False)
    except Exception as err:
        return str(err) or repr(err)
    try:
        from ndn_edge.federation.link import NatsLink

        link = NatsLink(config)
        link.nc, link.js = nc, nc.jetstream()
        await asyncio.wait_for(link._ensure_buckets(), CHECK_TIMEOUT_S)
    except Exception as err:
        return str(err) or repr(err)
    finally:
        await nc.close()
    return None


async def _view(config: FederationConfig, timeout_s: float) -> dict[str, Any]:
    """What NATS says: its health, and every gateway's last heartbeat and devices."""
    import json

    import nats

    from ndn_edge.federation.keys import FederationKey
    from ndn_edge.federation.placement import DEAD_AFTER_S

    out: dict[str, Any] = {"nats": {"reachable": False}, "gateways": [], "devices": {}}
    try:
        nc = await nats.connect(list(config.nats), connect_timeout=max(1, int(timeout_s)), max_reconnect_attempts=0,
                                allow_reconnect=False)
    except Exception as err:
        out["nats"]["error"] = str(err) or repr(err)
        return out
    key = FederationKey(config.key)
    try:
        info = nc._server_info if hasattr(nc, "_server_info") else {}
        out["nats"] = {"reachable": True, "server": info.get("server_name") or info.get("server_id"),
                       "version": info.get("version"), "jetstream": bool(info.get("jetstream")),
                       "cluster_size": max(1, len(info.get("connect_urls") or []))}
        js = nc.jetstream()
        out["nats"].update(await _jetstream_health(js, config))
        gw = await js.key_value(config.bucket("gw"))
        place = await js.key_value(config.bucket("place"))
        served: dict[str, list[str]] = {}
        for name in await _keys(place):
            entry = await place.get(name)
            if entry.value is None:
                continue
            try:
                record = json.loads(key.open(f"{config.bucket('place')}/{name}", entry.value))
                from ndn_edge.federation.config import from_kv_key

                served.setdefault(record.get("gw"), []).append(from_kv_key(name.partition(".")[2]))
            except Exception:  # a record that does not open: not ours to show
                continue
        for name in await _keys(gw):
            entry = await gw.get(name)
            if entry.value is None:
                continue
            try:
                record = json.loads(key.open(f"{config.bucket('gw')}/{name}", entry.value))
            except Exception:
                continue
            tag = record.get("tag", name.partition(".")[2])
            out["gateways"].append({**{k: record.get(k) for k in ("listen", "home", "http", "version", "state")},
                                    "tag": tag, "alive": time.time() - float(record.get("at", 0)) < DEAD_AFTER_S,
                                    "devices": len(served.get(tag, []))})
        out["devices"] = {tag: sorted(names) for tag, names in served.items() if tag}
    except Exception as err:
        out["nats"]["error"] = str(err) or repr(err)
    finally:
        await nc.close()
    return out


async def _jetstream_health(js: Any, config: FederationConfig) -> dict[str, Any]:
    """Each of the federation's buckets and its stream as JetStream keeps them: leader, replicas, size."""
    from ndn_edge.federation.link import BUCKETS

    buckets: dict[str, Any] = {}
    for name, stream in [*((b, f"KV_{config.bucket(b)}") for b in BUCKETS), ("pub", config.stream)]:
        try:
            info = await js.stream_info(stream)
        except Exception as err:  # not made yet (no gateway has started), or the cluster has no leader
            buckets[name] = {"error": str(err) or repr(err)}
            continue
        cluster = info.cluster
        replicas = list(getattr(cluster, "replicas", None) or [])
        buckets[name] = {"leader": getattr(cluster, "leader", None), "replicas": 1 + len(replicas),
                         "current": 1 + sum(1 for r in replicas if getattr(r, "current", False)),
                         "messages": info.state.messages}
    return {"buckets": buckets}


async def _keys(kv: Any) -> list[str]:
    try:
        return list(await kv.keys())
    except Exception:  # an empty bucket says "no keys found"
        return []


def _run(coro: Any) -> Any:
    return asyncio.run(coro)
