"""The first five minutes (issue 15): README's Quick start and tour, `python3 dev.py up`, `ndn-edge up` and
`ndn-edge sim` on homes that are already in use, signals, and where the gateway logs.

Real processes throughout: dev.py, `python -m ndn_edge.tools up|sim|gateway`, simulated devices on MicroPython,
each test on its own multicast port on 127.0.0.1. Every wait has a deadline.
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from ndn_edge.errors import ConfigError
from ndn_edge.state.home import Home
from ndn_edge.state.store import Store
from tests.support import GROUP, ROOT, Cluster, stop_process, wait_until

DEV = ROOT / "dev.py"


def load_dev():
    spec = importlib.util.spec_from_file_location("dev_under_test", DEV)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# -- the README


def readme_blocks(heading: str) -> list[str]:
    """The fenced code blocks of one README section."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```[a-z]*\n(.*?)```", section, re.S)


def test_readme_tour_shows_the_thermostat_file_as_it_is():
    """Item 16: the tour showed different code than examples/thermostat.py has."""
    text = (ROOT / "README.md").read_text()
    block = text.split("A board app (`examples/thermostat.py`):\n```python\n", 1)[1].split("```", 1)[0]
    assert block == (ROOT / "examples" / "thermostat.py").read_text()


def test_readme_states_the_exit_code_rule():
    """Item 7: the one rule, documented in the README as in --help."""
    readme = (ROOT / "README.md").read_text()
    assert "## Exit codes" in readme and "anything wrong before a request is sent exits **2**" in readme
    assert "`call --all` that matched no device exits 4" in readme


def test_readme_says_how_to_get_ndn_edge_on_the_path():
    """Item 13: after the Quick start, `ndn-edge devices` was `command not found`. The block right after the two
    commands, run as written in a shell from the checkout, finds `ndn-edge`."""
    blocks = readme_blocks("Quick start")
    assert blocks[0].split()[:3] == ["python3", "dev.py", "up"]
    path_block = blocks[1]
    assert ". .venv/bin/activate" in path_block and "ndn-edge" in path_block
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.skip("no ./.venv in this checkout (python3 dev.py creates it)")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"  # as in a fresh shell: ndn-edge is not on it
    script = "\n".join(line.split("#", 1)[0] for line in path_block.splitlines())
    run = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: ndn-edge") and "exit codes" in run.stdout


# -- python3 dev.py up


def test_dev_up_uses_its_own_home_and_port_and_keeps_once():
    """Item 14: `dev.py up` used the default home (refused where a gateway runs) and the default port, and any
    argument dropped --once."""
    dev = load_dev()
    args = dev.up_args([])
    assert args[:2] == ["--home", str(ROOT / ".demo")] and args[-1] == "--once"
    group = args[args.index("--group") + 1]
    address, port = group.rsplit(":", 1)
    assert address == "224.0.23.170" and int(port) != 56363
    with_home = dev.up_args(["--home", "/x"])
    assert with_home[:3] == ["--home", "/x", "--group"] and with_home[4:] == ["--once"]
    assert dev.up_args(["--home", "/x", "--group", "224.0.23.170:4000"]) == \
        ["--home", "/x", "--group", "224.0.23.170:4000", "--once"]
    assert dev.up_args(["--home=/x", "--group=224.0.23.170:4000", "--once"]) == \
        ["--home=/x", "--group=224.0.23.170:4000", "--once"]
    assert dev.up_args(["--keep-running", "--home", "/x", "--group", "g"]) == ["--home", "/x", "--group", "g"]
    assert ".demo/" in (ROOT / ".gitignore").read_text().split()


def dev_up(home: Path, port: int, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen:
    if not (ROOT / ".venv" / ".installed-test").exists():
        pytest.skip("./.venv is not set up for tests (python3 dev.py test sets it up)")
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, str(DEV), "up", "--home", str(home), "--group", f"{GROUP}:{port}",
                                 *extra], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_dev_up_with_a_home_keeps_once_beside_a_running_gateway(tmp_path, mcast_port, micropython):
    """Item 14: with `--home X` the demo still exits after its tour; another gateway serving the default home (here
    $NDN_EDGE_HOME) does not stop it."""
    (tmp_path / "other").mkdir()
    other = Cluster(tmp_path / "other", free_other_port())
    other.start_gateway()
    try:
        env = env_for(micropython)
        env["NDN_EDGE_HOME"] = str(other.home)  # the default home, already served
        log = tmp_path / "dev-up.log"
        proc = dev_up(tmp_path / "demo", mcast_port, env, log, "--devices", "1")
        try:
            code = proc.wait(90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = log.read_text(errors="replace")
        assert code == 0, text
        assert f"home       {tmp_path / 'demo'}" in text and "discovery  1 devices online" in text
        assert "Ctrl-C to stop" not in text  # --once: the tour, then exit
        assert processes_of(tmp_path / "demo") == []
        assert other.gateway is not None and other.gateway.poll() is None  # the other gateway is untouched
    finally:
        other.close()


def free_other_port() -> int:
    from tests.support import free_udp_port

    return free_udp_port()


def test_dev_up_demo_has_a_default_client_and_sigterm_leaves_nothing_behind(tmp_path, mcast_port, micropython):
    """Items 15 and 8: `ndn-edge devices` in the demo home failed ("several clients ... client=NAME"); SIGTERM on
    dev.py left `ndn-edge up` and its three MicroPython devices running, and SIGTERM on `up` left gateway.json."""
    home = tmp_path / "demo"
    env = env_for(micropython)
    log = tmp_path / "dev-up.log"
    proc = dev_up(home, mcast_port, env, log, "--keep-running", "--devices", "2")
    try:
        wait_until(lambda: "Ctrl-C to stop." in log.read_text(errors="replace") or proc.poll() is not None, 60,
                   interval_s=0.1, what="the demo's tour")
        assert proc.poll() is None, log.read_text()
        assert (home / "default-client").read_text() == "demo\n"
        listed = ndn_edge(env, "--home", str(home), "devices", "--json")  # no --as
        assert listed.returncode == 0, listed.stderr
        assert [d["name"] for d in json.loads(listed.stdout)["items"]] == ["/edge/sim/1", "/edge/sim/2"]
        assert "ndn-edge devices --home" in log.read_text()  # the hint needs no --as either
        assert len(processes_of(home)) >= 3  # `up` and its devices
        proc.send_signal(signal.SIGTERM)  # to dev.py's pid, as `kill PID` would
        code = proc.wait(30)
        assert code == 130, log.read_text()
        wait_until(lambda: not processes_of(home), 15, what="every process of the demo to end")
        assert not (home / "gateway.json").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for line in processes_of(home):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


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
        assert home_snapshot(cluster.home) == before == (["backup", "clients", "store-id"], [], [])
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
