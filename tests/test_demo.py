"""The first five minutes (issue 15): `ndn-edge up` and `ndn-edge sim` on homes that are already in use, exit
codes that need a gateway, and where the gateway logs.

Real processes throughout: dev.py, `python -m ndn_edge.tools up|sim|gateway`, simulated devices on MicroPython,
each test on its own multicast port on 127.0.0.1. Every wait has a deadline.
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
from pathlib import Path

from ndn_edge.errors import ConfigError
from ndn_edge.state.home import Home
from ndn_edge.state.store import Store
from tests.support import GROUP, ROOT, Cluster, stop_process, wait_until


def env_for(micropython: str | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if micropython:
        env["MICROPYTHON"] = micropython
    env.pop("NDN_EDGE_CLIENT", None)
    return env


def one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ndn-edge: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def ndn_edge(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ndn_edge.tools", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def home_snapshot(home: Path) -> tuple[list[str], list[str], list[str]]:
    """(files under the home except the store's own, client names, device names): what a command may have planted."""
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*")
                   if not p.name.startswith("gateway.db") and p.name != "gateway.json"
                   and not p.name.startswith("ndn_seq_"))  # a running device writes its replay state when it will
    with Store(Home(home).db_path) as store:
        clients = [c.name for c in store.list_clients()]
        devices = [row[0] for row in store.query("SELECT name FROM devices ORDER BY name")]
    return files, clients, devices


def processes_of(path: Path) -> list[str]:
    """Processes whose command line names `path` or whose working folder is under it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(path) in cmdline or cwd.startswith(str(path)):
            found.append(f"{entry.name}: {cmdline.strip()} (in {cwd})")
    return found


# -- ndn-edge up and sim on a home already in use


def test_refused_up_changes_nothing(tmp_path, mcast_port):
    """Item 2: `up` refused with "a gateway already serves home" had already created clients demo (rule **) and
    guest, the sim devices with keys, and their configs."""
    cluster = Cluster(tmp_path, mcast_port)
    cluster.start_gateway()
    try:
        env = env_for()
        before = home_snapshot(cluster.home)
        refused = ndn_edge(env, "--home", str(cluster.home), "up", "--group", f"{GROUP}:{mcast_port}", "--once")
        assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
        assert cluster.gateway is not None
        one_error_line(refused.stderr, f"up: a gateway (pid {cluster.gateway.pid}) already serves home",
                       "nothing was changed")
        assert home_snapshot(cluster.home) == before == (["clients"], [], [])
    finally:
        cluster.close()


def test_up_asks_before_an_allow_everything_client_in_a_home_in_use(tmp_path, mcast_port):
    """Item 2: the demo's client allowed everything must not appear in a home with real clients or devices unasked."""
    home = tmp_path / "home"
    env = env_for()
    assert ndn_edge(env, "--home", str(home), "client", "add", "alice").returncode == 0
    before = home_snapshot(home)
    refused = ndn_edge(env, "--home", str(home), "up", "--group", f"{GROUP}:{mcast_port}", "--once")
    assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
    one_error_line(refused.stderr, f"home {home} already holds client alice", "client 'demo' allowed to call "
                   "everything", "nothing was changed", "--yes")
    assert home_snapshot(home) == before


def test_a_second_sim_on_one_home_is_refused(tmp_path, mcast_port, micropython):
    """Item 4 (the CLI's half): two `ndn-edge sim` ran side by side with the same names and keys."""
    cluster = Cluster(tmp_path, mcast_port)
    cluster.env["MICROPYTHON"] = micropython
    cluster.start_sim(1)
    try:
        wait_until(lambda: "Ctrl-C to stop" in cluster.log("sim") or cluster.sim.poll() is not None, 30,
                   interval_s=0.05, what="the first sim")
        assert cluster.sim is not None and cluster.sim.poll() is None, cluster.log("sim")
        before = home_snapshot(cluster.home)
        for verb in (["sim", "--devices", "1"], ["up", "--devices", "1", "--once"]):
            second = ndn_edge(cluster.env, "--home", str(cluster.home), *verb, "--group", f"{GROUP}:{mcast_port}")
            assert (second.returncode, second.stdout) == (2, ""), second.stdout + second.stderr
            one_error_line(second.stderr, f"{verb[0]}: the devices /edge/sim/* of home {cluster.home} already run in "
                           f"another process (pid {cluster.sim.pid}", "nothing was changed")
        assert home_snapshot(cluster.home) == before
        assert cluster.sim.poll() is None
    finally:
        cluster.close()


# -- exit codes that need a gateway


def test_a_gather_that_matched_nothing_is_not_success(tmp_path, mcast_port):
    """Item 7: `call --all` that matched nothing exited 0; a script that asked for answers got none."""
    cluster = Cluster(tmp_path, mcast_port)
    cluster.clients(alice="sim/**")
    cluster.start_gateway()
    try:
        for extra, out in (((), ""), (("--json",), "{}\n")):
            code, stdout, err = cluster.cli("call", "--all", "sim/*/temperature", "--timeout", "1", *extra)
            assert (code, stdout) == (4, out), err
            one_error_line(err, "call: no matching device offers that service", "ndn-edge devices --home")
    finally:
        cluster.close()


# -- where the gateway logs


def test_gateway_in_the_background_of_a_terminal_logs_to_a_file(tmp_path, mcast_port):
    """Item 17: `ndn-edge gateway &` wrote its log lines into the terminal the user provisions in. In the background
    of a terminal it now logs to HOME/gateway.log; its one start-up line says so."""
    home = tmp_path / "home"
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # in the child, after setsid: the pty is its terminal, as in a shell
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    script = (f"{sys.executable} -m ndn_edge.tools --home {home} gateway --group {GROUP}:{mcast_port} &\n"
              "wait\n")
    shell = subprocess.Popen(["bash", "-m", "-c", script], cwd=ROOT, env=env_for(), stdin=slave, stdout=slave,
                             stderr=slave, start_new_session=True, preexec_fn=controlling_terminal)
    os.close(slave)
    seen = bytearray()

    def read_terminal() -> None:
        while select.select([master], [], [], 0)[0]:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            seen.extend(data)

    try:
        def started() -> bool:
            read_terminal()
            try:
                return Home(home).read_gateway_record().pid > 0
            except ConfigError:
                return False
        wait_until(started, 20, what="the gateway's record")
        gateway_pid = Home(home).read_gateway_record().pid
        log = home / "gateway.log"
        wait_until(lambda: log.exists() and "gateway_started" in log.read_text(), 10, what="the log file")
        wait_until(lambda: (read_terminal(), b"; logs in " in seen)[1], 10, what="the start-up line")
        os.kill(gateway_pid, signal.SIGTERM)
        assert shell.wait(20) == 0
        read_terminal()
        terminal = seen.decode(errors="replace")
        assert f"logs in {log}" in terminal and "gateway_started" not in terminal, terminal
        assert "gateway_stopped" in log.read_text()
        assert not (home / "gateway.json").exists()
    finally:
        stop_process(shell)
        os.close(master)
