"""The home folder: where one gateway keeps its store, its address record and the client credentials it issued.

Layout (everything private to the user: folders 0700, files 0600):

    HOME/gateway.db          the SQLite store (gateway/state/store.py)
    HOME/store-id            the identity of this home's store (so an emptied or swapped file is noticed)
    HOME/backup/gateway.db   the last copy of the store found whole, made by the gateway
    HOME/gateway.json        address record of the running gateway, written at start-up
    HOME/clients/NAME.json   client credentials: {"name", "site", "key": 64 hex}

Decisions:
- Secrets are written through a temporary file opened with `O_CREAT | O_EXCL` and mode 0600, then linked into
  place; at no moment does a readable-by-others file hold a key, and a concurrent `client add` of the same name
  cannot overwrite an existing credentials file (the link fails instead).
- Credentials files more permissive than 0600 are refused when read, as ssh does with private keys.
- The home remembers how it was found (`source`), so hints can repeat `--home DIR` when the user passed it.
- The gateway record names the gateway's pid; this module does not decide whether a stale record is an error
  (a pid from another pid namespace may look dead), it offers `GatewayRecord.pid_alive()` for callers that know.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ndn_edge.errors import ConfigError, DamagedStore, StoreError
from ndn_edge.wire.protocol import KEY_BYTES

if TYPE_CHECKING:
    from ndn_edge.state.store import Store

ENV_HOME = "NDN_EDGE_HOME"
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def validate_client_name(name: str) -> str:
    """Return `name` if it is a valid client name, else raise ValueError saying what is allowed."""
    if not isinstance(name, str) or not _CLIENT_NAME.fullmatch(name) or name[0] in "_.":
        raise ValueError(f"invalid client name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-', "
                         "not starting with '_' or '.'")
    return name


@dataclass(frozen=True)
class ClientCredentials:
    """What a client needs to talk to the gateway: its name, the site and its key."""

    name: str
    site: str
    key: bytes = field(repr=False)
    path: Path


@dataclass(frozen=True)
class GatewayRecord:
    """Where the running gateway of a home listens."""

    host: str
    port: int
    iface: str
    group: str
    port_mcast: int
    site: str
    pid: int

    def pid_alive(self) -> bool:
        """True if a process with the recorded pid exists on this host (in this pid namespace)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class Home:
    """The data folder of one gateway and its clients."""

    def __init__(self, path: str | os.PathLike[str], source: str = "argument") -> None:
        self._path = Path(path).expanduser().absolute()
        self.source = source

    def __repr__(self) -> str:
        return f"Home({str(self._path)!r})"

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None = None) -> Home:
        """The home: `path`, else $NDN_EDGE_HOME, else $XDG_DATA_HOME/ndn-edge or ~/.local/share/ndn-edge."""
        if path is not None and str(path) != "":
            return cls(path, "argument")
        env = os.environ.get(ENV_HOME)
        if env:
            return cls(env, ENV_HOME)
        xdg = os.environ.get("XDG_DATA_HOME")
        if xdg and os.path.isabs(xdg):
            return cls(Path(xdg) / "ndn-edge", "default")
        try:
            user_home = Path.home()
        except RuntimeError as err:
            raise ConfigError(f"cannot find a data folder ({err}); set ${ENV_HOME} or pass --home DIR") from err
        return cls(user_home / ".local" / "share" / "ndn-edge", "default")

    @property
    def path(self) -> Path:
        return self._path

    @property
    def db_path(self) -> Path:
        return self._path / "gateway.db"

    @property
    def clients_dir(self) -> Path:
        return self._path / "clients"

    @property
    def store_id_file(self) -> Path:
        return self._path / "store-id"

    @property
    def backup_path(self) -> Path:
        return self._path / "backup" / "gateway.db"

    @property
    def gateway_file(self) -> Path:
        return self._path / "gateway.json"

    def hint(self, command: str) -> str:
        """`command` as the user should type it for this home (adds `--home DIR` when it was given)."""
        return f"{command} --home {self._path}" if self.source == "argument" else command

    def ensure(self) -> Home:
        """Create the home and its clients folder (mode 0700) if missing; return self."""
        for folder in (self._path, self.clients_dir):
            try:
                folder.mkdir(mode=_DIR_MODE, parents=True)
            except FileExistsError:
                if not folder.is_dir():
                    raise ConfigError(f"{folder} exists and is not a folder; choose another home with --home DIR") \
                        from None
            else:
                os.chmod(folder, _DIR_MODE)  # mkdir's mode is filtered by the umask
        return self

    # -- the store

    def open_store(self, *, check: bool = False) -> Store:
        """The home's store. A new home gets a new store and remembers its identity; a store file that is
        emptied, new or another store's where this home had one, or (with `check`) damaged, is refused with one
        line saying how to restore the last good copy: never started afresh, which would lose every device,
        client and sequence mark."""
        from ndn_edge.state.store import Store

        self.ensure()
        if _read_only(self._path):
            raise StoreError(f"home {self._path} is on a read-only file system, and the store must be written there; "
                             "remount it read-write, or use another home with --home DIR")
        expected = self._read_store_id()
        try:
            store = Store(self.db_path, expect_id=expected, check=check)
        except DamagedStore as err:
            raise DamagedStore(f"{err}; {self._restore_hint()}") from err
        if expected is None:
            try:
                _write_private(self.store_id_file, (store.store_id + "\n").encode(), replace=False)
            except FileExistsError:  # another process of this home got there first: it must be the same store
                if self._read_store_id() != store.store_id:
                    store.close()
                    raise StoreError(f"{self.db_path} is not the store {self.store_id_file} names; "
                                     f"{self._restore_hint()}") from None
        return store

    def _read_store_id(self) -> str | None:
        try:
            text = self.store_id_file.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def _restore_hint(self) -> str:
        backup = self.backup_path
        if not backup.exists():
            return (f"no good copy is kept yet; move {self.db_path} aside and remove {self.store_id_file} to start "
                    "a new, empty store")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(backup.stat().st_mtime))
        db = self.db_path
        return (f"the last good copy is {backup} (from {when}): with the gateway stopped, run: mv {db} {db}.damaged; "
                f"rm -f {db}-wal {db}-shm; cp {backup} {db}")

    def back_up(self, store: Store) -> Path:
        """Copy the store (known good) to `backup_path`; returns it."""
        folder = self.backup_path.parent
        folder.mkdir(mode=_DIR_MODE, exist_ok=True)
        store.backup(self.backup_path)
        return self.backup_path

    # -- client credentials

    def client_file(self, name: str) -> Path:
        """Path of the credentials file for client `name` (validated)."""
        return self.clients_dir / f"{validate_client_name(name)}.json"

    def write_client(self, name: str, key: bytes, site: str, *, replace: bool = False) -> Path:
        """Write `clients/NAME.json` mode 0600; an existing file is a ConfigError unless `replace`."""
        path = self.client_file(name)
        if len(key) != KEY_BYTES:
            raise ValueError(f"client key is {len(key)} bytes, {KEY_BYTES} expected")
        self.ensure()
        data = json.dumps({"name": name, "site": site, "key": key.hex()}, indent=2) + "\n"
        try:
            _write_private(path, data.encode(), replace=replace)
        except FileExistsError:
            raise ConfigError(f"credentials file {path} already exists; remove the client first with: "
                              f"{self.hint(f'ndn-edge client remove {name}')}") from None
        return path

    def read_client(self, name: str) -> ClientCredentials:
        """The credentials of client `name`; ConfigError saying how to create them when missing or broken."""
        path = self.client_file(name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise ConfigError(f"no client '{name}' in {self.clients_dir}; create it with: "
                              f"{self.hint(f'ndn-edge client add {name}')}") from None
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode & 0o777
            if os.name == "posix" and mode & 0o077:
                raise ConfigError(f"credentials file {path} is readable by others (mode {mode:04o}); "
                                  f"fix it with: chmod 600 {path}")
            raw = f.read()
        try:
            obj = json.loads(raw)
            key = bytes.fromhex(obj["key"])
            site = obj["site"]
            if len(key) != KEY_BYTES or not isinstance(site, str) or obj.get("name") != name:
                raise ValueError("wrong key length, site or name")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"credentials file {path} is damaged ({err}); recreate it with: "
                              f"{self.hint(f'ndn-edge client remove {name}')} and "
                              f"{self.hint(f'ndn-edge client add {name}')}") from None
        return ClientCredentials(name=name, site=site, key=key, path=path)

    def remove_client(self, name: str) -> bool:
        """Delete the credentials file of `name`; False if there was none."""
        try:
            self.client_file(name).unlink()
        except FileNotFoundError:
            return False
        return True

    # -- gateway address record

    def write_gateway_record(self, host: str, port: int, iface: str, group: str, port_mcast: int, site: str,
                             pid: int) -> Path:
        """Record where this home's gateway listens (atomically replaces any previous record)."""
        self.ensure()
        record = {"host": host, "port": int(port), "iface": iface, "group": group, "port_mcast": int(port_mcast),
                  "site": site, "pid": int(pid)}
        _write_private(self.gateway_file, (json.dumps(record, indent=2) + "\n").encode(), replace=True)
        return self.gateway_file

    def read_gateway_record(self) -> GatewayRecord:
        """The running gateway's record; ConfigError saying how to start one when absent."""
        path = self.gateway_file
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"no gateway running for home {self._path}; start one with: "
                              f"ndn-edge gateway --home {self._path}") from None
        try:
            obj = json.loads(raw)
            return GatewayRecord(host=str(obj["host"]), port=int(obj["port"]), iface=str(obj["iface"]),
                                 group=str(obj["group"]), port_mcast=int(obj["port_mcast"]),
                                 site=str(obj["site"]), pid=int(obj["pid"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"gateway record {path} is damaged ({err}); restart the gateway with: "
                              f"ndn-edge gateway --home {self._path}") from None

    def remove_gateway_record(self, pid: int | None = None) -> bool:
        """Delete the gateway record (only if it names `pid`, when given); True if deleted."""
        if pid is not None:
            try:
                if self.read_gateway_record().pid != pid:
                    return False
            except ConfigError:
                return False
        try:
            self.gateway_file.unlink()
        except FileNotFoundError:
            return False
        return True


def is_loopback(host: str) -> bool:
    """True for an address only this host can reach (a listener there needs no TLS)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reachable_host(host: str) -> str:
    """The address this host reaches a listener bound to `host` at (a wildcard bind: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def listener_url(scheme: str, host: str, port: int, path: str = "") -> str:
    """`scheme://HOST:PORT/path` for a listener bound to `host` (reachable_host; an IPv6 address in brackets)."""
    host = reachable_host(host)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{path}"


def write_listener_record(path: Path, url: str) -> None:
    """Record a listener of this process: `{"url", "pid"}` in `path`, mode 0600, replaced atomically."""
    _write_private(path, (json.dumps({"url": url, "pid": os.getpid()}) + "\n").encode(), replace=True)


def remove_listener_record(path: Path) -> None:
    """Delete a record `write_listener_record` wrote in this process; one another process wrote stays."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write `data` to `path` mode 0600 via a fresh temp file; FileExistsError if present and not `replace`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), _FILE_MODE)
    try:
        try:
            os.fchmod(fd, _FILE_MODE)  # the umask may only have removed bits; make it exactly 0600
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails with FileExistsError instead of overwriting
            except FileExistsError:
                raise
            except OSError:  # no hard links on this file system: check, then rename
                if os.path.lexists(path):
                    raise FileExistsError(path) from None
                os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    _fsync_dir(path.parent)


def _read_only(folder: Path) -> bool:
    """True if `folder` is on a file system mounted read-only."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs here: SQLite will say so when it writes
        return False


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
