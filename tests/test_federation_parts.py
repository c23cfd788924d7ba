"""The federation's parts that need no NATS: sealing, tokens, names in NATS, the command line's refusals, and a
single gateway that never imports the federation (docs/operations.md "More than one gateway")."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cbor2
import pytest

from ndn_edge.errors import ConfigError
from ndn_edge.federation import config as fc
from ndn_edge.federation.keys import BadSeal, FederationKey
from tests.support import ROOT


def test_sealed_values_open_only_with_the_key_and_only_where_they_were_put():
    key, other = FederationKey(os.urandom(32)), FederationKey(os.urandom(32))
    secret = os.urandom(32)
    sealed = key.seal("ndne_x_ident/d.abc", secret)
    assert secret not in sealed and secret.hex().encode() not in sealed
    assert key.open("ndne_x_ident/d.abc", sealed) == secret
    with pytest.raises(BadSeal):
        other.open("ndne_x_ident/d.abc", sealed)
    with pytest.raises(BadSeal):
        key.open("ndne_x_ident/d.other", sealed)  # moved to another key
    for damaged in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:10], b"", b"\x02" + sealed[1:]):
        with pytest.raises(BadSeal):
            key.open("ndne_x_ident/d.abc", damaged)
    assert key.vouched(b"body", key.vouch(b"body")) and not other.vouched(b"body", key.vouch(b"body"))
    assert repr(key) == "FederationKey(...)"


def test_enrolment_tokens_and_names_in_nats():
    config = fc.new_config("edge", fc.parse_urls("127.0.0.1:4222,nats://u:p@10.0.0.2:4223"))
    assert config.nats == ("nats://127.0.0.1:4222", "nats://u:p@10.0.0.2:4223")
    joined = fc.config_from_token(fc.token_of(config))
    assert (joined.federation, joined.site, joined.nats, joined.key) == \
        (config.federation, config.site, config.nats, config.key)
    assert joined.gateway != config.gateway or len(joined.gateway) == 4
    assert config.key.hex() not in repr(config)
    for bad in ("", "hello", fc.TOKEN_PREFIX + "!!!", fc.token_of(config)[:-8]):
        with pytest.raises(ConfigError):
            fc.config_from_token(bad)
    for bad in ("http://x:1", "nats://nohost", "", ","):
        with pytest.raises(ConfigError):
            fc.parse_urls(bad)
    assert config.device_subject("/edge/kitchen/th1") == f"ndne.{config.federation}.d.edge.kitchen.th1"
    odd = config.device_subject("/edge/a.b/*/ü")
    assert odd.count(".") == 6 and "*" not in odd and ">" not in odd
    assert fc.from_kv_key(fc.kv_key("/edge/a b/ü")) == "/edge/a b/ü"


def test_the_federation_file_is_private_and_checked(tmp_path):
    config = fc.new_config("edge", ("nats://127.0.0.1:4222",))
    path = fc.write_config(tmp_path, config)
    assert path.stat().st_mode & 0o777 == 0o600
    assert fc.read_config(tmp_path) == config
    with pytest.raises(ConfigError, match="enrolled in a federation already"):
        fc.write_config(tmp_path, config)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        fc.read_config(tmp_path)
    path.chmod(0o600)
    path.write_text(json.dumps({"federation": "zz"}))
    with pytest.raises(ConfigError, match="federation join"):
        fc.read_config(tmp_path)
    assert fc.read_config(tmp_path / "nowhere") is None


def _cli(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ndn_edge.tools", "--home", str(home), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_bad_federation_usage_is_one_line_and_exit_2(tmp_path):
    home = tmp_path / "home"
    for args, says in ((("federation", "join", "not-a-token"), "not an enrolment token"),
                       (("federation", "status"), "not enrolled"),
                       (("federation", "init", "--nats", "http://x:1"), "must start with nats://"),
                       (("gateway", "--federation", "nats://127.0.0.1:1"), "needs an enrolled home")):
        done = _cli(home, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and says in done.stderr and done.stdout == "", (args, done.stderr)
    token = fc.token_of(fc.new_config("other", ("nats://127.0.0.1:4222",)))
    assert _cli(home, "client", "add", "alice").returncode == 0  # the home is for site edge now
    done = _cli(home, "federation", "join", token)
    assert done.returncode == 2 and "site" in done.stderr


def test_a_single_gateway_never_imports_the_federation(tmp_path):
    code = (
        "import asyncio, sys\n"
        "from ndn_edge.daemon import Gateway\n"
        "from ndn_edge.state.home import Home\n"
        "async def main():\n"
        f"    gw = Gateway(Home({str(tmp_path / 'home')!r}), iface='127.0.0.1', port=0)\n"
        "    await gw.start()\n"
        "    await gw.stop()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'nats' or m.startswith('ndn_edge.federation')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_an_adopted_operation_is_asked_about_until_its_device_answers(tmp_path):
    """A takeover's running operation: its `_op_get` is tried again after a failure (the device busy, a lost
    datagram), not left for RECONCILE_S; one recovered after a restart of a single gateway is asked once, as
    before. The device's report of an end then finds the adopted row."""
    import asyncio
    import time

    from ndn_edge.answers import Answer
    from ndn_edge.errors import DeadlineExceeded
    from ndn_edge.patterns.operations import Operations
    from ndn_edge.state.store import Store

    class Side:
        def __init__(self) -> None:
            self.asked: list[str] = []

        def is_online(self, device: str) -> bool:
            return True

        async def call(self, device: str, service: str, args, *, timeout_s: float = 5.0, trace=None) -> Answer:
            assert service == "_op_get"
            self.asked.append(args["op"])
            if self.asked.count(args["op"]) < 3:
                raise DeadlineExceeded("no answer")
            return Answer.of({"op": args["op"], "state": "done", "result": 7})

    def row(op_id: str, device_op: str) -> tuple:
        now = time.time() - 5
        return (op_id, "op", "alice", "/edge/a/1", "slow", b"\xa0", "running", device_op, None, None, None, None,
                now, now, None)

    async def run() -> None:
        with Store(tmp_path / "gateway.db") as store:
            side = Side()
            first = Operations(store, side, site="edge")
            await first.start()
            first.adopt([row("0190a1b2c3d4e5f6aaaa", "d2")])  # a row of this store, running at a restart
            await first.stop()
            ops = Operations(store, side, site="edge")
            side.asked.clear()
            await ops.start()
            try:
                assert ops.adopt([row("0190a1b2c3d4e5f61a2b", "d1")]) == ["0190a1b2c3d4e5f61a2b"]
                assert ops.adopt([row("0190a1b2c3d4e5f61a2b", "d1")]) == []  # known already
                info = await ops.get("0190a1b2c3d4e5f61a2b", wait_ms=1)
                deadline = time.monotonic() + 10
                while info["state"] == "running":
                    assert time.monotonic() < deadline, (info, side.asked)
                    info = await ops.get("0190a1b2c3d4e5f61a2b", wait_ms=1000)
                assert info["state"] == "done" and info["result"] == 7
                assert side.asked.count("d1") == 3 and side.asked.count("d2") == 1
            finally:
                await ops.stop()

    asyncio.run(run())


# -- values kept from relayed replies (ndn_edge.federation.results)


def _result(value, *, fresh_ms=None, age_ms=0, stale=False, cached=True):
    from ndn_edge.answers import Answer
    from ndn_edge.wire.client_protocol import encode_call_result

    return encode_call_result(Answer(cbor2.dumps(value), cached, age_ms, stale, fresh_ms or 0))


def test_a_relayed_value_is_kept_as_long_as_its_gateway_holds_it_and_no_longer():
    from ndn_edge.federation.results import RelayedResults

    now = [100.0]
    kept = RelayedResults(clock=lambda: now[0])
    dev = "/edge/c/1"
    kept.keep(dev, "temperature", None, _result(21.5, fresh_ms=1500, age_ms=250))
    kept.keep(dev, "temperature", {"unit": "F"}, _result(70.7, fresh_ms=800))
    answer = kept.answer(dev, "temperature", {})  # no arguments: the same call as None
    assert answer is not None and answer.value == 21.5 and answer.cached and not answer.stale
    assert answer.age_ms == 250 and answer.fresh_ms == 1500
    assert kept.answer(dev, "temperature", {"unit": "F"}).value == 70.7
    assert kept.answer(dev, "temperature", {"unit": "C"}) is None  # other arguments: another call
    assert kept.answer("/edge/c/2", "temperature", None) is None
    now[0] += 1.0
    assert kept.answer(dev, "temperature", None).age_ms == 1250
    assert kept.answer(dev, "temperature", {"unit": "F"}) is None  # its 800 ms are over
    now[0] += 0.6
    assert kept.answer(dev, "temperature", None) is None and not kept.may_hold(dev, "temperature")
    assert kept.counters == {"kept": 2, "hits": 3}


@pytest.mark.parametrize("content", [
    _result(1, fresh_ms=0),                       # not held fresh by the serving gateway
    _result(1, fresh_ms=500, stale=True),         # stale: never kept (and never carries fresh_ms)
    _result(1),
    cbor2.dumps({"value": 1, "fresh_ms": 500}),   # not laid out as a call result
    cbor2.dumps({"code": "NOT_FOUND", "message": "x"}),
    b"\xa5\x65value",                             # cut short
    b"",
    b"\xa5\x65value\x01\x66cached\xf5\x66age_ms\x20\x65stale\xf4\x68fresh_ms\x19\x01\xf4",  # negative age
    b"\xa5\x65value\x01\x66cached\xf5\x66age_ms\x00\x65stale\xf4\x68fresh_ms\xf5",  # fresh_ms not a number
])
def test_what_is_not_a_fresh_call_result_is_not_kept(content):
    from ndn_edge.federation.results import RelayedResults

    kept = RelayedResults()
    kept.keep("/edge/c/1", "t", None, content)
    kept.keep("/edge/c/1", "t", {1: "not text-keyed"}, _result(1, fresh_ms=500))
    assert len(kept) == 0 and kept.answer("/edge/c/1", "t", None) is None and kept.counters["kept"] == 0


def test_the_value_is_kept_as_the_device_encoded_it_and_the_store_is_bounded():
    from ndn_edge.federation.results import RelayedResults

    half = b"\xf9\x3c\x00"  # 1.0 as a half-precision float, as MicroPython's encoder may write it
    content = b"\xa5\x65value" + half + b"\x66cached\xf5\x66age_ms\x00\x65stale\xf4\x68fresh_ms\x19\x03\xe8"
    assert cbor2.loads(content)["value"] == 1.0
    kept = RelayedResults(max_entries=3)
    kept.keep("/edge/c/1", "t", None, content)
    assert kept.answer("/edge/c/1", "t", None).cbor == half
    for n in range(10):
        kept.keep("/edge/c/1", "t", {"n": n}, _result(n, fresh_ms=1000))
    assert len(kept) == 3 and kept.answer("/edge/c/1", "t", {"n": 9}).value == 9


def test_a_counter_on_a_local_block_moves_to_a_shared_one_as_soon_as_it_has_it():
    """A standby's first numbers for a device come from a local block, which may lie below what the device's
    previous gateway signed: the device drops them as replays. The counter says to await a shared lease before its
    first signature (`ready`) and, once a shared block arrives, signs from it at once instead of finishing the local
    block (1,024 numbers, every one dropped)."""
    import asyncio
    import logging

    from ndn_edge.federation.seqs import BLOCK, FedCounter
    from ndn_edge.logs import Throttle

    class Seqs:
        def __init__(self) -> None:
            self.gate = asyncio.Event()
            self.throttle = Throttle(logging.getLogger("test"))

        def connected(self) -> bool:
            return True

        def lease_locally(self, key: str, want: int) -> int:
            return want

        async def lease_shared(self, key: str, floor: int) -> tuple[int, int]:
            await self.gate.wait()
            return 5000, 5000 + BLOCK - 1

    async def scenario() -> None:
        seqs = Seqs()
        counter = FedCounter(seqs, "/edge/a/1/KEY/1")  # type: ignore[arg-type]
        lease = counter.ready()
        assert lease is not None and not lease.done()  # nothing shared yet: await the lease
        assert [counter.next(9), counter.next()] == [9, 10]  # (a caller that could not wait: a local block)
        seqs.gate.set()
        await asyncio.wait_for(lease, 5)
        assert counter.ready() is None
        assert [counter.next(), counter.next()] == [5000, 5001]  # the shared block at once
        assert counter.next(4000) == 5002 and counter.ready() is None
    asyncio.run(asyncio.wait_for(scenario(), 10))
