"""`ndn-edge client ...` and `ndn-edge acl ...`, the home folder, and the CLI's error contract."""
import errno
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ndn_edge.errors import ConfigError
from ndn_edge.state.home import Home, validate_client_name
from ndn_edge.tools import cli
from ndn_edge.tools.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(tmp_path, capsys):
    """Run `ndn-edge --home tmp_path ARGS...` in-process; returns (exit code, stdout, stderr)."""
    def run(*args):
        code = main(["--home", str(tmp_path), *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def assert_one_error_line(err, *fragments):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ndn-edge: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- client add / list / remove


def test_client_add_writes_private_credentials(run, tmp_path):
    code, out, err = run("client", "add", "bob", "--json")
    assert (code, err) == (0, "")
    path = Path(json.loads(out)["credentials"])
    assert json.loads(out) == {"name": "bob", "site": "edge", "credentials": str(tmp_path / "clients" / "bob.json")}
    assert path == tmp_path / "clients" / "bob.json"
    assert mode(path) == 0o600
    assert mode(tmp_path / "clients") == 0o700
    assert mode(tmp_path / "gateway.db") == 0o600
    data = json.loads(path.read_text())
    assert data["name"] == "bob" and data["site"] == "edge"
    assert re.fullmatch(r"[0-9a-f]{64}", data["key"])
    creds = Home(tmp_path).read_client("bob")
    assert creds.key.hex() == data["key"] and creds.site == "edge"
    assert data["key"] not in repr(creds)
    assert not [p for p in (tmp_path / "clients").iterdir() if p.name != "bob.json"]  # no temp files left


def test_client_add_site_option(run, tmp_path):
    assert run("client", "add", "carol", "--site", "/farm")[0] == 0
    assert json.loads((tmp_path / "clients" / "carol.json").read_text())["site"] == "farm"


def test_two_clients_get_different_keys(run, tmp_path):
    run("client", "add", "a")
    run("client", "add", "b")
    assert Home(tmp_path).read_client("a").key != Home(tmp_path).read_client("b").key


def test_duplicate_client_add_is_one_line_error(run, tmp_path):
    assert run("client", "add", "bob")[0] == 0
    before = (tmp_path / "clients" / "bob.json").read_text()
    code, out, err = run("client", "add", "bob")
    assert code != 0 and out == ""
    assert_one_error_line(err, "client add", "'bob' already exists", "ndn-edge client remove bob")
    assert (tmp_path / "clients" / "bob.json").read_text() == before  # the old key is untouched


def test_client_add_refuses_an_orphan_credentials_file(run, tmp_path):
    Home(tmp_path).write_client("eve", b"\x01" * 32, "edge")
    code, _, err = run("client", "add", "eve")
    assert code != 0
    assert_one_error_line(err, "client add", "eve.json exists")
    assert run("client", "remove", "eve")[0] == 0  # the suggested fix works
    assert run("client", "add", "eve")[0] == 0


@pytest.mark.parametrize("bad", ["_x", ".x", "a/b", "a b", "x" * 65, ""])
def test_client_add_bad_name(run, bad):
    code, out, err = run("client", "add", bad)
    assert code == 2 and out == ""  # a usage mistake
    assert_one_error_line(err, "ndn-edge: client add: argument NAME: invalid client name",
                          "(see ndn-edge client add --help)")


def test_client_list_text_and_json(run):
    code, out, err = run("client", "list")
    assert code == 0 and out == "" and "no clients" in err
    run("client", "add", "bob")
    run("client", "add", "alice")
    run("acl", "grant", "bob", "kitchen/**")
    code, out, _ = run("client", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "RULES"]
    assert lines[1].startswith("alice") and lines[2].startswith("bob") and lines[2].endswith("kitchen/**")
    code, out, _ = run("client", "list", "--json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["alice", "bob"]
    assert rows[1]["rules"] == ["kitchen/**"] and rows[0]["rules"] == []
    assert rows[1]["credentials"].endswith("bob.json")
    assert "key" not in rows[0]


def test_client_remove(run, tmp_path):
    run("client", "add", "bob")
    run("acl", "grant", "bob", "**")
    assert run("client", "remove", "bob")[0] == 0
    assert not (tmp_path / "clients" / "bob.json").exists()
    assert json.loads(run("acl", "list", "--json")[1]) == []
    assert json.loads(run("client", "list", "--json")[1]) == []
    code, _, err = run("client", "remove", "bob")
    assert code == 4
    assert_one_error_line(err, "client remove", "no client 'bob'")


# -- acl


def test_acl_grant_list_revoke(run):
    run("client", "add", "bob")
    run("client", "add", "alice")
    assert run("acl", "grant", "bob", "/kitchen/*/temperature")[0] == 0
    assert run("acl", "grant", "bob", "garage/**") == (0, "bob may now call names matching garage/**\n", "")
    assert run("acl", "grant", "alice", "**")[0] == 0
    code, out, _ = run("acl", "list", "--json")
    assert code == 0
    assert json.loads(out) == [{"client": "alice", "pattern": "**"},
                               {"client": "bob", "pattern": "garage/**"},
                               {"client": "bob", "pattern": "kitchen/*/temperature"}]
    code, out, _ = run("acl", "list", "--client", "bob")
    assert out.splitlines() == ["CLIENT  PATTERN", "bob     garage/**", "bob     kitchen/*/temperature"]
    assert run("acl", "revoke", "bob", "garage/**")[0] == 0
    assert json.loads(run("acl", "list", "--client", "bob", "--json")[1]) == \
        [{"client": "bob", "pattern": "kitchen/*/temperature"}]
    code, _, err = run("acl", "revoke", "bob", "garage/**")
    assert code == 4
    assert_one_error_line(err, "acl revoke", "no rule 'garage/**'")


def test_acl_grant_unknown_client(run):
    code, out, err = run("acl", "grant", "ghost", "**")
    assert code == 4 and out == ""
    assert_one_error_line(err, "acl grant", "no client 'ghost'", "ndn-edge client add ghost")


def test_acl_list_unknown_client(run):
    code, _, err = run("acl", "list", "--client", "ghost")
    assert code == 4
    assert_one_error_line(err, "acl list", "no client 'ghost'")


@pytest.mark.parametrize("pattern, fragment", [("a//b", "empty component"), ("temp*", "mixing '*'"),
                                               ("/", "empty pattern")])
def test_acl_bad_pattern(run, pattern, fragment):
    run("client", "add", "bob")
    code, out, err = run("acl", "grant", "bob", pattern)
    assert code == 2 and out == ""
    assert_one_error_line(err, "ndn-edge: acl grant: argument PATTERN: ", fragment)
    assert json.loads(run("acl", "list", "--json")[1]) == []


# -- the command table and main's contract


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_works_on_every_command(command, capsys):
    assert main([*command.split(), "--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: ndn-edge {command}") and err == ""
    assert ("--home DIR" in out) == (command not in ("flash", "deploy"))  # issue 15: no option without a use


def test_help_on_groups_and_top_level(capsys):
    for argv in (["--help"], ["client", "--help"], ["acl", "--help"]):
        assert main(argv) == 0
    out = capsys.readouterr().out
    for verb in ("gateway", "up", "sim", "devices", "services", "call", "provision", "deploy", "flash", "vboard"):
        assert verb in out



@pytest.mark.parametrize("args, fragment", [(("--tick", "-1"), "tick must be seconds from 0 to 86400"),
                                            (("--loss", "1"), "loss must be a probability"),
                                            (("--seed", "-1"), "seed must be an integer from 0"),
                                            (("--devices", "0"), "device count must be 1 to 1000"),
                                            (("--heap", "lots"), "heap must be a size")])
def test_usage_errors_are_one_line(run, args, fragment):
    code, out, err = run("sim", *args)
    assert code == 2 and out == ""
    assert_one_error_line(err, "ndn-edge: sim: argument ", fragment, "(see ndn-edge sim --help)")

def test_version_is_the_packages(capsys):
    from ndn_edge import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr() == (f"ndn-edge {__version__}\n", "")


def test_usage_error_returns_two(capsys):
    assert main(["client"]) == 2
    assert_one_error_line(capsys.readouterr().err, "ndn-edge: client: ", "required")


def test_verb_without_a_handler_says_so(run, monkeypatch):
    monkeypatch.setitem(COMMANDS, "flash", (None, cli._args_none, "flash"))
    code, out, err = run("flash")
    assert code == 1 and out == ""
    assert err == "ndn-edge: flash: not available yet\n"


@pytest.mark.parametrize("verb", ["provision", "deploy", "flash", "vboard"])
def test_board_verbs_are_plugged_in_by_module_path(verb):
    handler, builder, _ = COMMANDS[verb]
    assert isinstance(handler, str) and handler.startswith((".cmd_", ".vboard")) and isinstance(builder, str)
    assert callable(cli.resolve_handler(verb))


def test_handler_plugged_in_by_module_path(run, tmp_path, monkeypatch):
    plugin = tmp_path / "plugin_mod"
    plugin.mkdir()
    (plugin / "ndn_edge_test_plugin.py").write_text(
        "def do_call(state, args):\n"
        "    print('called', state.home.path)\n"
        "    return 0\n")
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.setitem(COMMANDS, "call", ("ndn_edge_test_plugin:do_call", cli._args_none, "call"))
    code, out, _ = run("call")
    assert code == 0 and out == f"called {tmp_path}\n"


def test_keyboard_interrupt_exits_130_quietly(run, monkeypatch):
    def do_call(state, args):
        raise KeyboardInterrupt
    monkeypatch.setitem(COMMANDS, "call", (do_call, cli._args_none, "call"))
    assert run("call") == (130, "", "")


@pytest.mark.parametrize("argv, fragment", [
    (("acl", "list", "--client", "a b"), "acl list: argument --client: invalid client name 'a b'"),
    (("acl", "revoke", "_x", "**"), "acl revoke: argument CLIENT: invalid client name '_x'"),
    (("client", "remove", "a/b"), "client remove: argument NAME: invalid client name 'a/b'"),
    (("call", "sim/1/echo", "--as", "../x"), "call: argument --as: invalid client name '../x'"),
])
def test_names_and_patterns_are_usage_errors(run, argv, fragment):
    """What a user types wrong is checked before anything runs: one line, exit status 2."""
    code, out, err = run(*argv)
    assert (code, out) == (2, "")
    assert_one_error_line(err, fragment)


@pytest.mark.parametrize("exc", [ValueError("bad value deep inside"), KeyError("k"), TypeError("t"),
                                 OSError(errno.EBADF, "Bad file descriptor")])
def test_a_bug_keeps_its_traceback_and_exits_70(run, monkeypatch, exc):
    """An exception no command expects (even a ValueError or an OSError the system did not refuse for a reason
    the user controls) is a bug: its traceback, then one line asking for a report, exit status 70."""
    from ndn_edge import __version__

    def do_call(state, args):
        raise exc
    monkeypatch.setitem(COMMANDS, "call", (do_call, cli._args_none, "call"))
    code, out, err = run("call")
    assert (code, out) == (70, "")
    lines = err.splitlines()
    assert lines[0] == "Traceback (most recent call last):" and "in do_call" in err
    assert lines[-2].startswith(type(exc).__name__)
    assert lines[-1] == (f"ndn-edge: call: internal error ({type(exc).__name__}), a bug in ndn-edge {__version__}; "
                         "please report it with the traceback above")


def test_an_os_error_about_a_path_is_one_line(run, monkeypatch, tmp_path):
    def do_call(state, args):
        (tmp_path / "missing" / "file").read_text()
    monkeypatch.setitem(COMMANDS, "call", (do_call, cli._args_none, "call"))
    code, out, err = run("call")
    assert (code, out) == (1, "")
    assert err == f"ndn-edge: call: No such file or directory: {tmp_path / 'missing' / 'file'}\n"


def test_config_error_exit_code_and_home_from_environment(tmp_path, monkeypatch, capsys):
    def do_call(state, args):
        state.home.read_client("zed")
    monkeypatch.setitem(COMMANDS, "call", (do_call, cli._args_none, "call"))
    monkeypatch.setenv("NDN_EDGE_HOME", str(tmp_path / "envhome"))
    assert main(["call"]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, f"no client 'zed' in {tmp_path / 'envhome' / 'clients'}",
                          "create it with: ndn-edge client add zed")
    assert "--home" not in err  # the environment already names the home


def test_home_before_or_after_the_verb(tmp_path, capsys):
    assert main(["client", "add", "bob", "--home", str(tmp_path / "one")]) == 0
    assert main(["--home", str(tmp_path / "two"), "client", "add", "bob"]) == 0
    assert (tmp_path / "one" / "clients" / "bob.json").exists()
    assert (tmp_path / "two" / "clients" / "bob.json").exists()


def test_real_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "ndn_edge.tools", "--home", str(tmp_path)]
    ok = subprocess.run([*base, "client", "add", "bob", "--json"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert mode(json.loads(ok.stdout)["credentials"]) == 0o600
    dup = subprocess.run([*base, "client", "add", "bob"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert dup.returncode != 0 and dup.stdout == ""
    assert_one_error_line(dup.stderr, "already exists")
    listed = subprocess.run([*base, "client", "list", "--json"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert [c["name"] for c in json.loads(listed.stdout)] == ["bob"]
    bad = subprocess.run([*base, "acl", "grant", "bob", "kitchen//x"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert_one_error_line(bad.stderr, "acl grant: argument PATTERN: pattern 'kitchen//x' has an empty component")


def test_cli_import_is_light():
    code = ("import sys, ndn_edge.tools.cli, ndn_edge\n"
            "heavy = sorted(m for m in sys.modules if m == 'ndn' or m.startswith(('ndn.', 'serial', 'sqlite3', "
            "'ndn_edge.state.store', 'cbor2')))\n"
            "print(heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- the home folder


def test_home_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("NDN_EDGE_HOME", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Home.resolve(tmp_path / "arg").path == tmp_path / "arg"
    assert Home.resolve().path == tmp_path / "env"
    monkeypatch.delenv("NDN_EDGE_HOME")
    assert Home.resolve().path == tmp_path / "xdg" / "ndn-edge"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    home = Home.resolve()
    assert home.path == tmp_path / "user" / ".local" / "share" / "ndn-edge"
    assert (home.db_path.name, home.clients_dir.name, home.gateway_file.name) == \
        ("gateway.db", "clients", "gateway.json")
    assert not home.path.exists()  # resolving creates nothing
    home.ensure()
    assert mode(home.path) == 0o700 and mode(home.clients_dir) == 0o700


@pytest.mark.parametrize("name, ok", [("bob", True), ("a.b-c_d", True), ("x" * 64, True), ("9", True),
                                      ("", False), ("_a", False), (".a", False), ("x" * 65, False),
                                      ("a/b", False), ("bé", False), ("a\n", False)])
def test_client_name_validation(name, ok):
    if ok:
        assert validate_client_name(name) == name
    else:
        with pytest.raises(ValueError, match="invalid client name"):
            validate_client_name(name)


def test_credentials_file_errors(tmp_path):
    home = Home(tmp_path)
    with pytest.raises(ConfigError) as info:
        home.read_client("bob")
    assert str(info.value) == (f"no client 'bob' in {tmp_path / 'clients'}; create it with: "
                               f"ndn-edge client add bob --home {tmp_path}")
    path = home.write_client("bob", b"\x02" * 32, "edge")
    with pytest.raises(ConfigError, match="already exists"):
        home.write_client("bob", b"\x03" * 32, "edge")
    assert home.read_client("bob").key == b"\x02" * 32
    home.write_client("bob", b"\x03" * 32, "edge", replace=True)
    assert home.read_client("bob").key == b"\x03" * 32 and mode(path) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"readable by others .*chmod 600"):
        home.read_client("bob")
    os.chmod(path, 0o600)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        home.read_client("bob")
    assert home.remove_client("bob") is True and home.remove_client("bob") is False


def test_gateway_record(tmp_path):
    home = Home(tmp_path)
    with pytest.raises(ConfigError) as info:
        home.read_gateway_record()
    assert str(info.value) == (f"no gateway running for home {tmp_path}; start one with: "
                               f"ndn-edge gateway --home {tmp_path}")
    home.write_gateway_record("127.0.0.1", 6363, "127.0.0.1", "224.0.23.170", 56363, "edge", os.getpid())
    rec = home.read_gateway_record()
    assert (rec.host, rec.port, rec.iface, rec.group, rec.port_mcast, rec.site, rec.pid) == \
        ("127.0.0.1", 6363, "127.0.0.1", "224.0.23.170", 56363, "edge", os.getpid())
    assert rec.pid_alive()
    assert mode(home.gateway_file) == 0o600
    assert home.remove_gateway_record(pid=os.getpid() + 1) is False  # another gateway's record stays
    assert home.remove_gateway_record(pid=os.getpid()) is True
    with pytest.raises(ConfigError):
        home.read_gateway_record()


def test_bounded_number_arguments():
    import argparse

    from ndn_edge.tools.argtypes import bounded
    loss = bounded(float, 0.0, 1.0, "loss must be from 0 up to 1", high_open=True)
    assert loss("0") == 0.0 and loss("0.5") == 0.5
    count = bounded(int, 1, 10, "count must be 1 to 10")
    assert count("10") == 10
    for parse, text in ((loss, "1"), (loss, "nan"), (loss, "-0.1"), (loss, "x"), (count, "0"), (count, "2.5"),
                        (count, "11")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"got '{text}'"):
            parse(text)
    timeout = bounded(float, 0, 3600, "timeout", low_open=True)
    assert timeout("3600") == 3600.0
    for text in ("0", "inf", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            timeout(text)


# -- the home's site, decided once (issue 15 item 1)


def test_a_client_added_while_the_gateway_starts_gets_the_gateways_site(tmp_path, mcast_port):
    """`ndn-edge gateway --site lab &` then at once `ndn-edge client add alice`: 19 of 20 credentials files said
    site edge, and every call then timed out blaming authentication."""
    from ndn_edge.tools.procs import gateway_may_be_starting
    from tests.support import stop_process

    for attempt in range(3):
        home = tmp_path / f"home{attempt}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        gateway = subprocess.Popen([sys.executable, "-m", "ndn_edge.tools", "--home", str(home), "gateway", "--site",
                                    "lab", "--group", f"224.0.23.170:{mcast_port}"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            added = subprocess.run([sys.executable, "-m", "ndn_edge.tools", "--home", str(home), "client", "add",
                                    "alice"], env=env, capture_output=True, text=True, timeout=60)
            assert added.returncode == 0, added.stderr
            assert json.loads((home / "clients" / "alice.json").read_text())["site"] == "lab"
            # it waited because this home's gateway runs; a home without one is not kept waiting
            assert gateway_may_be_starting(home)
            assert gateway_may_be_starting(tmp_path / ".." / tmp_path.name / home.name)  # the same folder
            assert not gateway_may_be_starting(tmp_path / "elsewhere")
        finally:
            stop_process(gateway)


def test_a_gateway_for_another_site_is_refused_in_one_line(run):
    assert run("client", "add", "alice")[0] == 0  # decides the home's site: edge
    code, _, err = run("gateway", "--site", "lab")
    assert code != 0
    assert_one_error_line(err, "this home is for site 'edge'", "--site edge")


# -- issue 15: the first five minutes, and every mistake after them


READ_ONLY = [("client", "list"), ("client", "list", "--json"), ("acl", "list"), ("acl", "list", "--client", "bob"),
             ("client", "remove", "bob"), ("acl", "revoke", "bob", "**"), ("devices",), ("services",),
             ("call", "sim/1/temperature"), ("ops",), ("sub", "sim/**")]


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
def test_a_command_that_only_reads_never_creates_a_home(tmp_path, capsys, argv):
    """`client list --home /typo` created the folder (and said "no clients"): a mistyped home is an error."""
    typo = tmp_path / "typo"
    code = main(["--home", str(typo), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert_one_error_line(err, str(typo))
    assert not typo.exists()


def test_reading_an_empty_home_creates_nothing_in_it(tmp_path, run):
    """A home folder without a store yet lists nothing, and still gets no store."""
    code, out, err = run("client", "list")
    assert (code, out) == (0, "") and "no clients" in err
    assert run("acl", "list", "--json") == (0, "[]\n", "")
    assert list(tmp_path.iterdir()) == []


def test_read_only_real_process_leaves_no_folder(tmp_path):
    typo = tmp_path / "typo"
    proc = subprocess.run([sys.executable, "-m", "ndn_edge.tools", "client", "list", "--home", str(typo)], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert_one_error_line(proc.stderr, "client list: there is no home at", "nothing was created")
    assert not typo.exists()


def test_client_add_and_acl_confirm_what_they_did(run, tmp_path):
    code, out, err = run("client", "add", "alice")
    assert (code, err) == (0, "")
    assert out == (f"client alice added for site /edge, credentials in {tmp_path / 'clients' / 'alice.json'}; it "
                   f"may call nothing until: ndn-edge acl grant alice PATTERN --home {tmp_path}\n")
    assert run("acl", "grant", "alice", "/kitchen/**") == (0, "alice may now call names matching kitchen/**\n", "")
    assert run("acl", "grant", "alice", "kitchen/**") == (0, "alice already had the rule kitchen/**; nothing "
                                                              "changed\n", "")
    assert run("acl", "revoke", "alice", "kitchen/**") == (0, "alice no longer has the rule kitchen/**\n", "")
    assert run("client", "remove", "alice") == (0, "client alice removed: its key, rules and credentials file\n", "")


def usage_home(tmp_path) -> Path:
    """A home with one client and no gateway: nothing can be sent, so only what is checked first can answer."""
    assert main(["--home", str(tmp_path), "client", "add", "bob"]) == 0
    return tmp_path


@pytest.mark.parametrize("argv, fragment", [
    (("call", "sim//1/temperature"), "call: NAME: name 'sim//1/temperature'"),
    (("call", "sim"), "is not like DEVICE/SERVICE"),
    (("call", "sim/1/temperature", "--args", "{bad"), "call: --args is not valid JSON"),
    (("call", "sim/1/temperature", "--args", "[1]"), "--args must be a JSON object"),
    (("call", "--all", "sim//temperature"), "has an empty component"),
    (("call", "--all", "sim/*"), "must end with a service name"),
    (("call", "--notify", "a b/c"), "call: NAME: "),
    (("sub", "sim//tick"), "sub: argument PATTERN: pattern 'sim//tick' has an empty component"),
    (("services", "kitchen//th1"), "services: argument DEVICE: "),
    (("acl", "grant", "bob", "a//b"), "acl grant: argument PATTERN:"),
    (("call", "sim/1/temperature", "--as", "../x"), "invalid client name"),
    (("call", "sim/1/temperature", "--as", "ghost"), "no client 'ghost'"),
])
def test_everything_wrong_before_a_request_is_sent_exits_2(tmp_path, capsys, argv, fragment):
    """Issue 15 item 7: one rule. A bad name was 3 for `call`, a bad pattern 3 for `sub`, bad --args JSON 3."""
    home = usage_home(tmp_path)
    capsys.readouterr()
    code = main(["--home", str(home), *argv])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert_one_error_line(err, fragment)


def test_a_bad_client_name_in_the_environment_exits_2(tmp_path, capsys, monkeypatch):
    """It was a traceback and exit status 70 (a ValueError deep in the home)."""
    home = usage_home(tmp_path)
    monkeypatch.setenv("NDN_EDGE_CLIENT", "a b")
    assert main(["--home", str(home), "call", "sim/1/temperature"]) == 2
    assert_one_error_line(capsys.readouterr().err, "call: $NDN_EDGE_CLIENT: invalid client name 'a b'")


def test_the_exit_code_rule_is_in_the_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "one rule: what is wrong before a request is sent exits 2" in out
    assert "also `call --all` that matched nothing" in out
    assert "interrupted (Ctrl-C or SIGTERM)" in out


def test_several_clients_and_the_default_client(tmp_path, capsys, monkeypatch):
    """Without --as: the home's default client (written by `up`), else a message that names the CLI's ways."""
    monkeypatch.delenv("NDN_EDGE_CLIENT", raising=False)
    for name in ("demo", "guest"):
        assert main(["--home", str(tmp_path), "client", "add", name]) == 0
    capsys.readouterr()
    assert main(["--home", str(tmp_path), "devices"]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, "several clients", "(demo, guest)", "--as NAME", "$NDN_EDGE_CLIENT",
                          str(tmp_path / "default-client"))
    assert "client=NAME" not in err
    (tmp_path / "default-client").write_text("demo\n")
    assert main(["--home", str(tmp_path), "devices"]) == 2  # the client is chosen; the gateway is what is missing
    assert_one_error_line(capsys.readouterr().err, "devices: no gateway running for home")
    assert main(["--home", str(tmp_path), "client", "remove", "demo"]) == 0
    assert "no longer the home's default client" in capsys.readouterr().out
    assert not (tmp_path / "default-client").exists()


def test_devices_marks_a_name_two_devices_announce(capsys):
    """Issue 15 item 4: the directory's warning reaches `ndn-edge devices` (a mark in the table, the line below)."""
    from ndn_edge.tools.cmd_client import print_devices

    print_devices([{"name": "/edge/sim/1", "state": "online", "last_seen": None, "services": 3,
                    "warning": "two devices announce this name in turn: a call may run on either; stop one"},
                   {"name": "/edge/sim/2", "state": "online", "last_seen": None, "services": 3}])
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert rows[0].split() == ["NAME", "STATE", "LAST", "SEEN", "PATH", "SERVICES"]
    assert "online (!)" in rows[1] and "(!)" not in rows[2]
    assert err == "(!) /edge/sim/1: two devices announce this name in turn: a call may run on either; stop one\n"
