"""A browser page as the dashboard test drives it (`Page`), in Chromium through Playwright (`chromium`) and in
Firefox through WebDriver BiDi (`firefox`, on tests.bidi), so that one scenario checks both browsers for the
same things.

    async with firefox("/usr/bin/firefox", tmp_path / "firefox") as page:
        await page.goto(url)
        await page.fill("#token", token)
        await page.click("#signin button")
        await page.wait_for("document.querySelector('#who').textContent !== ''", 10, what="the sign-in")

Decisions:
- A small interface of what a person does and sees: go to a URL, fill a field, click, wait for a condition,
  read the page, take a screenshot, resize the viewport; plus the page's console errors. Conditions and reads
  are JavaScript expressions evaluated in the page, not a framework's selector dialect, so that both
  implementations mean exactly the same thing.
- Every wait has a deadline and fails with what it waited for. The BiDi page polls its condition; Playwright's
  waits are its own (`wait_for_function`, and the actionability checks of `fill` and `click`).
- A click is real pointer input in both browsers (Playwright's `click`; BiDi's `input.performActions` on the
  element's centre), once the element is visible and enabled: a button hidden under another element is not
  clicked. A field is filled by setting its value and firing `input` and `change`, as typing ends.
"""
from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.bidi import Firefox, value_of

DESKTOP = (1280, 900)
POLL_S = 0.05
# The element for a selector once a person could use it (shown, enabled), scrolled into view; else null.
_ACTIONABLE = """(selector) => {
  const e = document.querySelector(selector);
  if (!e || e.getClientRects().length === 0 || getComputedStyle(e).visibility === "hidden" || e.disabled) {
    return null;
  }
  e.scrollIntoView({ block: "center", inline: "center" });
  return e;
}"""
_FILL = """(element, value) => {
  element.focus();
  element.value = value;
  element.dispatchEvent(new Event("input", { bubbles: true }));
  element.dispatchEvent(new Event("change", { bubbles: true }));
}"""


def visible(selector: str) -> str:
    """A condition: the first element matching `selector` is shown (it has a box and is not hidden)."""
    return (f"(e => !!e && e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden')"
            f"(document.querySelector({json.dumps(selector)}))")


class Page(abc.ABC):
    """One browser tab."""

    def __init__(self) -> None:
        self.errors: list[str] = []  # console errors and uncaught exceptions, as the browser words them

    @abc.abstractmethod
    async def goto(self, url: str) -> None:
        """Load `url` and wait for its `load` event."""

    @abc.abstractmethod
    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise awaited), as JSON-like Python."""

    @abc.abstractmethod
    async def wait_for(self, condition: str, timeout_s: float = 10.0, *, what: str = "") -> None:
        """Until the JavaScript expression `condition` is truthy; AssertionError naming `what` at the deadline."""

    @abc.abstractmethod
    async def fill(self, selector: str, value: str, timeout_s: float = 10.0) -> None:
        """Set the field's value, once it is visible and enabled."""

    @abc.abstractmethod
    async def click(self, selector: str, timeout_s: float = 10.0) -> None:
        """Click the element's centre with the pointer, once it is visible and enabled."""

    @abc.abstractmethod
    async def screenshot(self, path: Path, full_page: bool = False) -> None:
        """A PNG of the viewport, or of the whole page."""

    @abc.abstractmethod
    async def set_viewport(self, width: int, height: int) -> None:
        """Resize the viewport (CSS pixels)."""

    async def wait_visible(self, selector: str, timeout_s: float = 10.0) -> None:
        await self.wait_for(visible(selector), timeout_s, what=f"{selector} to show")

    async def text(self, selector: str) -> str:
        """The rendered text of the first element matching `selector` ("" when there is none)."""
        return str(await self.evaluate(f"document.querySelector({json.dumps(selector)})?.innerText ?? ''"))

    async def count(self, selector: str) -> int:
        return int(await self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))


def _timed_out(what: str, timeout_s: float) -> AssertionError:
    return AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class PlaywrightPage(Page):
    """A Playwright page (its async API)."""

    def __init__(self, page: Any) -> None:
        super().__init__()
        self.page = page
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)

    async def goto(self, url: str) -> None:
        await self.page.goto(url)

    async def evaluate(self, expression: str) -> Any:
        return await self.page.evaluate(expression)

    async def wait_for(self, condition: str, timeout_s: float = 10.0, *, what: str = "") -> None:
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        try:
            await self.page.wait_for_function(condition, timeout=timeout_s * 1000)
        except PlaywrightTimeout:
            raise _timed_out(what or condition, timeout_s) from None

    async def fill(self, selector: str, value: str, timeout_s: float = 10.0) -> None:
        await self.page.fill(selector, value, timeout=timeout_s * 1000)

    async def click(self, selector: str, timeout_s: float = 10.0) -> None:
        await self.page.click(selector, timeout=timeout_s * 1000)

    async def screenshot(self, path: Path, full_page: bool = False) -> None:
        await self.page.screenshot(path=path, full_page=full_page)

    async def set_viewport(self, width: int, height: int) -> None:
        await self.page.set_viewport_size({"width": width, "height": height})


class BidiPage(Page):
    """A browsing context (a tab) of a WebDriver BiDi session."""

    def __init__(self, firefox: Firefox, context: str) -> None:
        super().__init__()
        self.session = firefox.session
        self.context = context

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "log.entryAdded" and params.get("level") == "error":
            self.errors.append(params.get("text") or json.dumps(params)[:500])

    async def goto(self, url: str) -> None:
        await self.session.command("browsingContext.navigate", {"context": self.context, "url": url,
                                                                "wait": "complete"}, timeout_s=30)

    async def _script(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The RemoteValue of script.evaluate or script.callFunction; AssertionError for a thrown exception."""
        answer = await self.session.command(method, {"target": {"context": self.context}, "awaitPromise": True,
                                                     **params})
        if answer["type"] == "exception":
            raise AssertionError(f"JavaScript threw: {answer['exceptionDetails'].get('text')}")
        result: dict[str, Any] = answer["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        return value_of(await self._script("script.evaluate", {"expression": expression}))

    async def _call(self, function: str, *args: Any) -> dict[str, Any]:
        """Call a JavaScript function with string or element (`{"sharedId"}`) arguments; its RemoteValue."""
        wire = [{"type": "string", "value": a} if isinstance(a, str) else a for a in args]
        return await self._script("script.callFunction", {"functionDeclaration": function, "arguments": wire})

    async def _poll(self, probe: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
        """`probe()` until its value is truthy; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise _timed_out(what, timeout_s)
            await asyncio.sleep(POLL_S)

    async def wait_for(self, condition: str, timeout_s: float = 10.0, *, what: str = "") -> None:
        await self._poll(lambda: self.evaluate(condition), timeout_s, what or condition)

    async def _actionable(self, selector: str, timeout_s: float) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            node = await self._call(_ACTIONABLE, selector)
            return {"sharedId": node["sharedId"]} if node.get("type") == "node" else None
        element: dict[str, Any] = await self._poll(probe, timeout_s, f"{selector} to be visible and enabled")
        return element

    async def fill(self, selector: str, value: str, timeout_s: float = 10.0) -> None:
        await self._call(_FILL, await self._actionable(selector, timeout_s), value)

    async def click(self, selector: str, timeout_s: float = 10.0) -> None:
        element = await self._actionable(selector, timeout_s)
        await self.session.command("input.performActions", {"context": self.context, "actions": [
            {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
                {"type": "pointerMove", "x": 0, "y": 0, "origin": {"type": "element", "element": element}},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0}]}]})

    async def screenshot(self, path: Path, full_page: bool = False) -> None:
        shot = await self.session.command("browsingContext.captureScreenshot", {
            "context": self.context, "origin": "document" if full_page else "viewport"}, timeout_s=30)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))

    async def set_viewport(self, width: int, height: int) -> None:
        await self.session.command("browsingContext.setViewport", {
            "context": self.context, "viewport": {"width": width, "height": height}})
        await self.wait_for(f"innerWidth === {width} && innerHeight === {height}", 5,
                            what=f"the viewport to be {width}x{height}")


@contextlib.asynccontextmanager
async def chromium(executable: str, args: list[str]) -> AsyncIterator[Page]:
    """A headless Chromium (`executable`, never a browser Playwright downloads) with one desktop-sized page."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=args)
        try:
            page = await browser.new_page(viewport={"width": DESKTOP[0], "height": DESKTOP[1]})
            yield PlaywrightPage(page)
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def firefox(executable: str, folder: Path) -> AsyncIterator[Page]:
    """A headless Firefox (`executable`; its profile and log in `folder`) with one desktop-sized tab."""
    browser = await Firefox.launch(executable, folder)
    try:
        tab = (await browser.session.command("browsingContext.create", {"type": "tab"}))["context"]
        page = BidiPage(browser, tab)
        browser.session.on_event = page.on_event
        await browser.session.command("session.subscribe", {"events": ["log.entryAdded"]})
        await page.set_viewport(*DESKTOP)
        yield page
    finally:
        await browser.close()
