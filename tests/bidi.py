"""A small WebDriver BiDi client (the W3C protocol, https://w3c.github.io/webdriver-bidi/) on aiohttp's websocket
client, and a headless stock Firefox started with its BiDi agent: how the dashboard test drives Debian's
`firefox-esr`.

    firefox = await Firefox.launch("/usr/bin/firefox", folder)      # a fresh profile in folder/profile
    try:
        tab = (await firefox.session.command("browsingContext.create", {"type": "tab"}))["context"]
        await firefox.session.command("browsingContext.navigate", {"context": tab, "url": url, "wait": "complete"})
    finally:
        await firefox.close()

Decisions:
- Commands are method names with parameter dicts, as the specification writes them (`command`); only the few a
  test uses are exercised, and nothing wraps them that a reader would have to learn besides the specification.
  Every answer has a deadline; a browser's error answer is a `BidiError` with its error code and message.
- One reader task matches answers to commands by id and hands events to one callback (`on_event`); when the
  socket closes, every pending command fails at once instead of waiting out its deadline.
- Firefox listens on `--remote-debugging-port 0`: it takes a free port and writes it to the profile's
  WebDriverBiDiServer.json, so browsers started at once by parallel tests never race for a port.
- The browser gets its own profile and home folder (its cache goes under $HOME), and prefs that keep it from
  reaching for updates, telemetry and experiments at start: the machine may have no internet.
- Stopped with `browser.close`, then waited for; killed at the deadline.
Rejected: Playwright's Firefox (its own patched build, downloaded from a CDN CI cannot reach); geckodriver
(another binary, and classic WebDriver over HTTP); Marionette (Firefox's private protocol).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

COMMAND_TIMEOUT_S = 10.0
SERVER_RECORD = "WebDriverBiDiServer.json"  # {"ws_host", "ws_port"}, written by Firefox into its profile
# No update, telemetry, default-browser or experiment checks: a test machine may have no internet, and a
# browser that waits on one is slower to start.
PREFS = {
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
}


class BidiError(Exception):
    """The browser answered a command with an error, or did not answer in time, or the connection closed."""


class BidiSession:
    """A WebDriver BiDi session on one websocket."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http = http
        self._ws = ws
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None

    @classmethod
    async def connect(cls, url: str, timeout_s: float = COMMAND_TIMEOUT_S) -> BidiSession:
        """Open the websocket at `url` (ws://HOST:PORT/session) and start a session (`session.new`)."""
        http = aiohttp.ClientSession()
        try:
            ws = await asyncio.wait_for(http.ws_connect(url, max_msg_size=0), timeout_s)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
            await http.close()
            why = str(err) or f"no answer in {timeout_s} s"
            raise BidiError(f"cannot open the WebDriver BiDi socket {url}: {why}") from err
        session = cls(http, ws)
        try:
            await session.command("session.new", {"capabilities": {}}, timeout_s)
        except BaseException:
            await session.close()
            raise
        return session

    async def command(self, method: str, params: dict[str, Any] | None = None,
                      timeout_s: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """Send one command; its result, or BidiError with the browser's error or at the deadline."""
        if self._reader.done():
            raise BidiError(f"{method}: the WebDriver BiDi connection is closed")
        self._next_id += 1
        ident = self._next_id
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = answer
        try:
            await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params or {}}))
            message = await asyncio.wait_for(answer, timeout_s)
        except asyncio.TimeoutError as err:  # not TimeoutError's subclass before 3.11
            raise BidiError(f"{method}: no answer from the browser in {timeout_s} s") from err
        finally:
            self._pending.pop(ident, None)
        if message.get("type") == "error":
            raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
        result: dict[str, Any] = message.get("result", {})
        return result

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                answer = self._pending.get(message.get("id", -1))
                if answer is not None and not answer.done():
                    answer.set_result(message)
                elif message.get("type") == "event" and self.on_event is not None:
                    self.on_event(message["method"], message.get("params", {}))
        finally:
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(BidiError("the WebDriver BiDi connection closed"))

    async def close(self) -> None:
        """Close the socket and stop the reader (idempotent)."""
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._http.close()


def value_of(remote: dict[str, Any]) -> Any:
    """A BiDi RemoteValue as Python: primitives, arrays and plain objects; anything else (a node, a function)
    as the RemoteValue itself."""
    kind = remote.get("type")
    if kind in ("undefined", "null"):
        return None
    if kind in ("string", "boolean"):
        return remote["value"]
    if kind == "number":
        value = remote["value"]
        if isinstance(value, str):  # "NaN", "-0", "Infinity", "-Infinity"
            return {"NaN": math.nan, "-0": -0.0, "Infinity": math.inf, "-Infinity": -math.inf}[value]
        return value
    if kind == "bigint":
        return int(remote["value"])
    if kind in ("array", "set"):
        return [value_of(item) for item in remote.get("value", [])]
    if kind in ("object", "map"):
        return {key if isinstance(key, str) else str(value_of(key)): value_of(item)
                for key, item in remote.get("value", [])}
    return remote


class Firefox:
    """A headless Firefox process with its WebDriver BiDi session."""

    def __init__(self, process: asyncio.subprocess.Process, session: BidiSession) -> None:
        self.process = process
        self.session = session

    @classmethod
    async def launch(cls, executable: str, folder: Path, timeout_s: float = 30.0) -> Firefox:
        """Start `executable` headless on a fresh profile in `folder`/profile (its output to `folder`/firefox.log),
        and open a session; BidiError if it does not listen within `timeout_s`."""
        profile, log = await asyncio.to_thread(_prepare, folder)
        env = dict(os.environ, HOME=str(folder), XDG_CACHE_HOME=str(folder / "cache"), MOZ_CRASHREPORTER_DISABLE="1")
        try:
            process = await asyncio.create_subprocess_exec(
                executable, "--headless", "--no-remote", "--remote-debugging-port", "0", "--profile", str(profile),
                "about:blank", stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        finally:
            log.close()
        try:
            port = await _listening_port(process, profile / SERVER_RECORD, folder / "firefox.log", timeout_s)
            session = await BidiSession.connect(f"ws://127.0.0.1:{port}/session")
        except BaseException:
            if process.returncode is None:
                process.kill()
            await _stop(process, 5.0)
            raise
        return cls(process, session)

    async def close(self, timeout_s: float = 10.0) -> int:
        """End the session and the browser (`browser.close`); kill it at the deadline; its exit code."""
        with contextlib.suppress(BidiError):
            await self.session.command("browser.close", timeout_s=timeout_s)
        await self.session.close()
        return await _stop(self.process, timeout_s)


def _prepare(folder: Path) -> tuple[Path, BinaryIO]:
    """A fresh profile folder with the prefs, and the browser's log file opened for writing."""
    profile = folder / "profile"
    profile.mkdir(parents=True)
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                             for k, v in PREFS.items()))
    return profile, open(folder / "firefox.log", "wb")  # the caller closes it once the child has it


def _port_in(record: Path) -> int | None:
    """The port in Firefox's server record, or None while it is missing or half written."""
    try:
        return int(json.loads(record.read_text())["ws_port"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def _listening_port(process: asyncio.subprocess.Process, record: Path, log: Path, timeout_s: float) -> int:
    """The port Firefox's BiDi agent listens on, once it has written `record`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise BidiError(f"firefox exited with {process.returncode} before listening:\n"
                            f"{await asyncio.to_thread(_tail, log)}")
        port = await asyncio.to_thread(_port_in, record)
        if port is not None:
            return port
        await asyncio.sleep(0.05)
    raise BidiError(f"firefox did not start its WebDriver BiDi agent within {timeout_s} s (no {record}):\n"
                    f"{await asyncio.to_thread(_tail, log)}")


async def _stop(process: asyncio.subprocess.Process, timeout_s: float) -> int:
    """Wait for `process` to exit; kill it after `timeout_s`."""
    try:
        return await asyncio.wait_for(process.wait(), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        return await asyncio.wait_for(process.wait(), timeout_s)
