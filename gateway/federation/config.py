"""A home's enrolment in a federation, and the names everything shared lives under.

    HOME/federation.json   {"federation": id, "site", "nats": [url...], "key": 64 hex, "gateway": tag}   mode 0600
    HOME/federation.state.json   what the running gateway last knew (connected or partitioned, devices served)

`ndn-edge federation init --nats URL` makes the first home's file (a new federation id and key) and prints an
enrolment token; `ndn-edge federation join TOKEN` writes another home's file from it. The token holds the
federation key: hand it over like a password (it is printed once, never logged).

Decisions:
- One site per federation: client credentials and request names carry the site, so every gateway must serve the
  same one (a second location is told apart by device names, `/edge/paris/...`, not by a second site).
- Each gateway has a tag of 4 hex characters, unique in its federation: it ends the ids of the operations the
  gateway keeps, so any gateway finds the owner of an operation from its id alone (no lookup per operation).
- Buckets, streams and subjects are namespaced by the federation id, so one NATS cluster can carry several
  federations (and tests share one cluster).
- Subjects are derived from NDN names: `ndne.<fed>.d.<site>.<device components...>` reaches the gateway serving a
  device; a component that is not plain text (`[A-Za-z0-9_-]`) is written `~` + base64url of its UTF-8.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ndn_edge.errors import ConfigError
from ndn_edge.federation.keys import KEY_BYTES

CONFIG_FILE = "federation.json"
STATE_FILE = "federation.state.json"
TOKEN_PREFIX = "ndnefed1_"
_TAG = re.compile(r"[0-9a-f]{4}")
_FED_ID = re.compile(r"[0-9a-f]{8}")
_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class FederationConfig:
    """What a gateway needs to join its federation."""

    federation: str
    site: str
    nats: tuple[str, ...]
    key: bytes = field(repr=False)
    gateway: str

    def with_nats(self, urls: tuple[str, ...]) -> FederationConfig:
        return FederationConfig(self.federation, self.site, urls, self.key, self.gateway)

    # -- names in NATS

    def bucket(self, what: str) -> str:
        """A key-value bucket of this federation: `ndne_<fed>_<what>`."""
        return f"ndne_{self.federation}_{what}"

    @property
    def stream(self) -> str:
        """The publications stream."""
        return f"ndne_{self.federation}_pub"

    def device_subject(self, device: str) -> str:
        """Where requests for a device go: `ndne.<fed>.d.<site>.<device...>` (`device` is a full name)."""
        return f"ndne.{self.federation}.d." + ".".join(subject_token(c) for c in device.strip("/").split("/"))

    def gateway_subject(self, tag: str) -> str:
        """Where requests for one gateway go (operations it keeps)."""
        return f"ndne.{self.federation}.g.{tag}"

    def pub_subject(self, tag: str, topic: str) -> str:
        """A publication from gateway `tag` on `topic` (relative to the site)."""
        return f"ndne.{self.federation}.pub.{tag}." + ".".join(subject_token(c) for c in topic.split("/"))

    @property
    def pub_subjects(self) -> str:
        return f"ndne.{self.federation}.pub.>"

    def to_json(self) -> dict[str, Any]:
        return {"federation": self.federation, "site": self.site, "nats": list(self.nats), "key": self.key.hex(),
                "gateway": self.gateway}

    @classmethod
    def from_json(cls, data: Any, where: str) -> FederationConfig:
        try:
            urls = tuple(str(u) for u in data["nats"])
            key = bytes.fromhex(data["key"])
            fed, site, tag = str(data["federation"]), str(data["site"]), str(data["gateway"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{where} is not a federation file ({err!r}); enrol the home again with "
                              "`ndn-edge federation join TOKEN`") from None
        if len(key) != KEY_BYTES or not _FED_ID.fullmatch(fed) or not _TAG.fullmatch(tag) or not urls:
            raise ConfigError(f"{where} is damaged; enrol the home again with `ndn-edge federation join TOKEN`")
        return cls(fed, site, urls, key, tag)


def subject_token(component: str) -> str:
    """One NDN name component as one NATS subject token."""
    if _PLAIN.fullmatch(component):
        return component
    return "~" + base64.urlsafe_b64encode(component.encode()).decode().rstrip("=")


def kv_key(text: str) -> str:
    """Text (a name, a pattern) as a key-value key: base64url, no padding."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def from_kv_key(key: str) -> str:
    """The text `kv_key` encoded; ValueError for anything else."""
    try:
        return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise ValueError(f"key {key!r} is not an encoded name") from err


def parse_urls(text: str) -> tuple[str, ...]:
    """`nats://HOST:PORT[,nats://...]` (the scheme may be left out; user:password@ is kept) as a tuple of URLs."""
    urls = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "nats://" + part
        scheme = part.split("://", 1)[0]
        if scheme not in ("nats", "tls"):
            raise ConfigError(f"NATS address {part!r} must start with nats:// or tls://")
        if not re.fullmatch(r"[a-z]+://([^@/\s]+@)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", part):
            raise ConfigError(f"NATS address {part!r} is not nats://HOST:PORT")
        urls.append(part)
    if not urls:
        raise ConfigError(f"no NATS address in {text!r}; give nats://HOST:PORT[,nats://HOST:PORT...]")
    return tuple(urls)


def new_config(site: str, urls: tuple[str, ...]) -> FederationConfig:
    """A new federation: a random id and key, and this home's tag."""
    return FederationConfig(secrets.token_hex(4), site, urls, secrets.token_bytes(KEY_BYTES), new_tag())


def new_tag() -> str:
    return secrets.token_hex(2)


def token_of(config: FederationConfig) -> str:
    """The enrolment token for other homes: the federation's id, site, NATS addresses and key (a secret)."""
    body = json.dumps({"f": config.federation, "s": config.site, "n": list(config.nats), "k": config.key.hex()},
                      separators=(",", ":")).encode()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


def config_from_token(token: str, tag: str | None = None) -> FederationConfig:
    """The configuration a home enrolled with `token` gets (a new tag unless given); ConfigError if malformed."""
    text = token.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise ConfigError("that is not an enrolment token (it starts with ndnefed1_); print one with "
                          "`ndn-edge federation init` in the first gateway's home")
    try:
        data = json.loads(from_kv_key(text[len(TOKEN_PREFIX):]))
        return FederationConfig.from_json({"federation": data["f"], "site": data["s"], "nats": data["n"],
                                           "key": data["k"], "gateway": tag or new_tag()}, "the token")
    except (ValueError, KeyError, TypeError):
        raise ConfigError("the enrolment token is damaged (copy it whole, it is one line)") from None


def config_path(home: Path) -> Path:
    return Path(home) / CONFIG_FILE


def read_config(home: Path) -> FederationConfig | None:
    """The home's enrolment, or None if it is not enrolled."""
    path = config_path(home)
    try:
        mode = path.stat().st_mode
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if mode & 0o077:
        raise ConfigError(f"{path} holds the federation key but is readable by others (mode {mode & 0o777:o}); "
                          f"run: chmod 600 {path}")
    return FederationConfig.from_json(data, str(path))


def write_config(home: Path, config: FederationConfig, *, replace: bool = False) -> Path:
    """Write HOME/federation.json (mode 0600); ConfigError if the home is enrolled already and not `replace`."""
    from ndn_edge.state.home import _write_private

    path = config_path(home)
    try:
        _write_private(path, json.dumps(config.to_json(), indent=1).encode(), replace=replace)
    except FileExistsError:
        raise ConfigError(f"home {home} is enrolled in a federation already ({path}); "
                          "`ndn-edge federation status` shows it") from None
    return path


def write_state(home: Path, state: dict[str, Any]) -> None:
    """What the running gateway knows of its federation, for `ndn-edge federation status` (no secrets)."""
    from ndn_edge.state.home import _write_private

    try:
        _write_private(Path(home) / STATE_FILE, json.dumps(state, sort_keys=True).encode(), replace=True)
    except OSError:
        pass  # only a report; the next change writes it again


def read_state(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(home) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_state(home: Path) -> None:
    try:
        os.unlink(Path(home) / STATE_FILE)
    except FileNotFoundError:
        pass
