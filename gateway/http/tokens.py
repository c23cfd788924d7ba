"""Bearer tokens for the HTTP API: issued to an existing client identity, stored hashed, checked in constant
time, revoked with the client or on their own.

    token = issue(store, "alice")            # "ndne_<id>_<secret>", shown once (`ndn-edge client token alice`)
    tokens = Tokens(store)
    caller = tokens.caller("Bearer " + token)  # Caller("alice", rules) or None

Decisions:
- A token is `ndne_<id>_<secret>`: a public id (12 hex) to find the row, and a 256-bit secret of which only the
  SHA-256 is stored (`http_tokens`, this module's own table, `Store.ensure_schema("http", MIGRATIONS)`). The
  secret is random, so a plain hash is as strong as a slow KDF would be, and costs a microsecond per request.
  The hash is compared with `hmac.compare_digest`; an unknown id is compared against a dummy hash, so a wrong
  id and a wrong secret take the same time.
- A token is bound to a client name with a foreign key (`ON DELETE CASCADE`): `ndn-edge client remove` removes
  its tokens; a client added later under the same name starts with none.
- Rows and rules are read from the store at most every `refresh_s` (1 s) per token, as the client face does for
  keys: a revoke or an `acl revoke` applies within a second, and a request costs no SQLite query.
- Tokens never reach a log: the caller is logged by client name and token id only.
Rejected: tokens as signed, self-contained claims (JWT): a revocation would need a deny list anyway, and the
gateway already holds the store; tokens in query strings (they end up in logs and browser history).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from ndn_edge.clients.verbs import Caller
from ndn_edge.errors import StoreError, UnknownClient

PREFIX = "ndne"
FEATURE = "http"
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE http_tokens (
            id TEXT PRIMARY KEY,
            client TEXT NOT NULL REFERENCES clients(name) ON DELETE CASCADE,
            hash BLOB NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX http_tokens_client ON http_tokens (client)",
    ),
)
_SHAPE = re.compile(rf"{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")
_DUMMY = hashlib.sha256(b"no such token").digest()
_NEGATIVE_CACHE = 4096


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def issue(store: Any, client: str) -> str:
    """A new token for `client` (UnknownClient if there is none); only its hash is kept."""
    store.ensure_schema(FEATURE, MIGRATIONS)
    if store.client(client) is None:
        raise UnknownClient(f"no client '{client}' in the store")
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    with store.transaction() as db:
        db.execute("INSERT INTO http_tokens (id, client, hash, created_at) VALUES (?, ?, ?, ?)",
                   (token_id, client, _hash(secret), time.time()))
    return f"{PREFIX}_{token_id}_{secret}"


def revoke(store: Any, client: str) -> int:
    """Revoke every token of `client`; how many there were."""
    store.ensure_schema(FEATURE, MIGRATIONS)
    with store.transaction() as db:
        return db.execute("DELETE FROM http_tokens WHERE client = ?", (client,)).rowcount


def listing(store: Any, client: str | None = None) -> list[dict[str, Any]]:
    """The tokens (id, client, created_at; never the secret) of one client or of all."""
    store.ensure_schema(FEATURE, MIGRATIONS)
    sql = "SELECT id, client, created_at FROM http_tokens"
    rows = store.query(sql + " WHERE client = ? ORDER BY created_at", (client,)) if client else \
        store.query(sql + " ORDER BY client, created_at")
    return [{"id": r[0], "client": r[1], "created_at": r[2]} for r in rows]


def token_id(token: str) -> str | None:
    """The public id of a well-formed token, or None."""
    found = _SHAPE.fullmatch(token)
    return found.group(1) if found else None


class _Entry:
    __slots__ = ("caller", "hash", "loaded_at")

    def __init__(self, caller: Caller, digest: bytes, loaded_at: float) -> None:
        self.caller = caller
        self.hash = digest
        self.loaded_at = loaded_at


class Tokens:
    """Checks bearer tokens against the store, with a short cache (see the module's decisions)."""

    def __init__(self, store: Any, *, refresh_s: float = 1.0) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._entries: dict[str, _Entry] = {}
        self._unknown: dict[str, float] = {}
        store.ensure_schema(FEATURE, MIGRATIONS)

    def caller(self, authorization: str | None) -> tuple[Caller, str] | None:
        """(the caller, its token id) for an `Authorization: Bearer <token>` header, or None if the header is
        missing, malformed, or names no current token."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        found = _SHAPE.fullmatch(token.strip())
        if found is None:
            return None
        tid, secret = found.groups()
        entry = self._entry(tid)
        expected = entry.hash if entry is not None else _DUMMY
        if not hmac.compare_digest(_hash(secret), expected) or entry is None:
            return None
        return entry.caller, tid

    def invalidate(self) -> None:
        """Read every token and its rules from the store again at its next use (a federation applying a change
        made on another gateway)."""
        self._entries.clear()
        self._unknown.clear()

    def _entry(self, tid: str) -> _Entry | None:
        now = time.monotonic()
        entry = self._entries.get(tid)
        if entry is not None and now - entry.loaded_at < self._refresh_s:
            return entry
        missed = self._unknown.get(tid)
        if missed is not None and now - missed < self._refresh_s:
            return None
        try:
            rows = self._store.query("SELECT client, hash FROM http_tokens WHERE id = ?", (tid,))
            rules = tuple(rule.parts for rule in self._store.rules(rows[0][0])) if rows else ()
        except (StoreError, UnknownClient):
            rows = []
        if not rows:
            self._entries.pop(tid, None)
            if len(self._unknown) >= _NEGATIVE_CACHE:
                self._unknown.clear()
            self._unknown[tid] = now
            return None
        entry = _Entry(Caller(rows[0][0], rules), bytes(rows[0][1]), now)
        self._entries[tid] = entry
        self._unknown.pop(tid, None)
        return entry
