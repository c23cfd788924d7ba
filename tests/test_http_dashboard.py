"""The dashboard (`GET /`, ndn_edge/http/static) in two real headless browsers, Debian's `chromium` (driven by
Playwright for Python) and Debian's `firefox-esr` (driven through its own WebDriver BiDi agent, tests.bidi),
against a gateway process with three MicroPython sim devices. One scenario (`dashboard_scenario`, over the
small page interface of tests.browsers) for both: sign in, see the devices, call a service from its form,
start a long-running operation, watch a topic, see a device go offline when its process is killed, on a
desktop and on a phone's width with nothing cut off. Screenshots of each state go to the test's folder
(`screenshots/`)."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from tests import browsers
from tests.browsers import Page
from tests.httpclient import HttpCluster
from tests.support import free_udp_port, run_scenario

CHROMIUM = os.environ.get("NDN_EDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
FIREFOX = os.environ.get("NDN_EDGE_FIREFOX", "/usr/bin/firefox-esr")
DEVICES = ["/edge/sim/1", "/edge/sim/2", "/edge/sim/3"]
PHONE = (390, 844)
SCENARIO_S = 120  # a backstop: every step has its own deadline
WRONG_TOKEN = "ndne_000000000000_" + "x" * 43

# Elements that stick out of the viewport, or whose content spills out of their own box, each as "what: where";
# a box that scrolls or clips on purpose (a result's <pre>) only has to fit itself, and what it holds is skipped.
# `checked` counts the elements looked at, so that a page where everything was skipped cannot pass.
CUT_OFF = """(() => {
  const width = document.documentElement.clientWidth, found = [];
  let checked = 0;
  const name = (e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
    + (typeof e.className === "string" && e.className ? "." + e.className.trim().split(/\\s+/).join(".") : "");
  const scrolls = (e) => { for (let p = e.parentElement; p; p = p.parentElement) {
    if (getComputedStyle(p).overflowX !== "visible") return true; } return false; };
  for (const e of document.body.querySelectorAll("*")) {
    const box = e.getBoundingClientRect();
    if (box.width === 0 || box.height === 0 || scrolls(e)) continue;
    checked += 1;
    if (box.left < -0.5 || box.right > width + 0.5) {
      found.push(`${name(e)}: ${Math.round(box.left)}..${Math.round(box.right)} of ${width}`);
    } else if (getComputedStyle(e).display !== "inline" && getComputedStyle(e).overflowX === "visible"
               && e.scrollWidth > e.clientWidth + 1) {
      found.push(`${name(e)}: content ${e.scrollWidth} wide in ${e.clientWidth}`);
    }
  }
  return { checked, found };
})()"""


def _require(executable: str, package: str) -> None:
    """A missing browser fails in CI (`.ci/run` installs it) and skips elsewhere."""
    if os.path.exists(executable) or shutil.which(executable):
        return
    if os.environ.get("CI") or os.environ.get("NDN_EDGE_REQUIRE_MICROPYTHON"):
        pytest.fail(f"{executable} is missing: apt-get install -y {package} (.ci/run does)")
    pytest.skip(f"{executable} is missing")


def _device(n: int) -> str:
    return f".device[data-device='sim/{n}']"


async def dashboard_scenario(page: Page, cluster: HttpCluster, token: str, shots: Path) -> None:
    """What a person does on the dashboard, with what each step must show; a screenshot of each state."""
    etag_before = (await asyncio.to_thread(cluster.get, "/api/v1/openapi.json")).headers["etag"]
    await page.goto(cluster.url + "/")
    await page.wait_visible("#signin button")
    await page.screenshot(shots / "01-sign-in.png")

    await page.fill("#token", WRONG_TOKEN)
    await page.click("#signin button")
    await page.wait_for("document.querySelector('#signin-error').textContent.includes('refused')",
                        what="the wrong token to be refused")
    await page.fill("#token", token)
    await page.click("#signin button")
    for n in (1, 2, 3):
        await page.wait_visible(f"{_device(n)} .state.online", 15)
    assert await page.count(".device") == 3
    assert "signed in as alice" in await page.text("#who")
    assert await page.text("#device-count") == "(3 of 3 online)"
    await page.wait_visible("#link.live")
    await page.screenshot(shots / "02-three-devices.png")

    # a service from its form: echo (no declared arguments: a JSON object), temperature, health, an operation
    sim2 = _device(2)
    await page.click(f"{sim2} .services-button")
    await page.fill(f"{sim2} form[data-service='echo'] textarea", '{"greeting": "from the browser"}')
    await page.click(f"{sim2} form[data-service='echo'] button[type=submit]")
    await page.wait_for(f"""document.querySelector("{sim2} form[data-service='echo'] .result")"""
                        """?.textContent.includes('from the browser')""", what="the echo's value")
    await page.click(f"{sim2} form[data-service='temperature'] button[type=submit]")
    # a number, then where it came from ("25" for 25.0: JavaScript prints whole floats bare)
    await page.wait_for(f"""/^\\d+(\\.\\d+)?\\n\\((from the device|cached)/.test(document.querySelector("""
                        f""""{sim2} form[data-service='temperature'] .result")?.textContent)""",
                        what="the temperature's value")
    await page.click(f"{sim2} .health-button")
    await page.wait_for(f"""[...document.querySelectorAll("{sim2} dl.health dt")]"""
                        """.some((dt) => dt.textContent === 'free heap')""", what="sim/2's health")
    await page.fill(f"{sim2} form[data-service='slow'] input[name='seconds']", "1.5")
    await page.click(f"{sim2} form[data-service='slow'] button[type=submit]")
    await page.wait_visible("#operations li[data-state='done']", 20)
    assert "sim/2/slow: done" in await page.text("#operations")
    await page.screenshot(shots / "03-called-from-forms.png", full_page=True)

    # a published value arrives in the topic view
    await page.fill("#topic", "sim/1/burst")
    await page.click("#topic-form button")
    await page.wait_for("document.querySelector('#topic-status').textContent === 'watching sim/1/burst'",
                        what="the topic stream to be live")
    sim1 = _device(1)
    await page.click(f"{sim1} .services-button")
    await page.fill(f"{sim1} form[data-service='burst'] input[name='n']", "4")
    await page.click(f"{sim1} form[data-service='burst'] button[type=submit]")
    await page.wait_for("[...document.querySelectorAll('#messages li')]"
                        ".some((li) => li.textContent.includes('sim/1/burst = 4'))", 15,
                        what="sim/1/burst = 4 in the topic view")
    await page.screenshot(shots / "04-published-value.png", full_page=True)

    # a device goes offline when its process dies
    for device in (sim1, sim2):  # fold the service forms away, so that every device fits the screenshot
        await page.click(f"{device} .services-button")
    os.kill(cluster.device_pid(3), signal.SIGKILL)
    await page.wait_visible(f"{_device(3)} .state.offline", 20)
    assert await page.count(f"{sim1} .state.online") == 1
    assert await page.text("#device-count") == "(2 of 3 online)"
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(shots / "05-device-offline.png")
    # the OpenAPI document follows: sim/3's services are gone, and with them the ETag
    doc = await asyncio.to_thread(cluster.get, "/api/v1/openapi.json")
    assert doc.headers["etag"] != etag_before
    assert not any(p.startswith("/call/sim/3/") for p in doc.json()["paths"])

    # a phone's width: one column, nothing wider than the screen, nothing cut off, forms included
    await page.set_viewport(*PHONE)
    await page.click(f"{sim2} .services-button")
    await page.wait_visible(f"{sim2} form[data-service='echo']")
    await page.evaluate("window.scrollTo(0, 0)")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE[0], f"the page is {width} px wide on a {PHONE[0]} px phone"
    cut_off = await page.evaluate(CUT_OFF)
    assert cut_off["found"] == [] and cut_off["checked"] > 50, cut_off
    await page.screenshot(shots / "06-phone.png")
    await page.screenshot(shots / "07-phone-whole-page.png", full_page=True)
    # the one expected failure: the wrong token's 401 (Chromium logs it; Firefox does not)
    assert [e for e in page.errors if "status of 401" not in e] == [], page.errors


def _wait_online(cluster: HttpCluster) -> None:
    client = cluster.connect("alice")
    try:
        cluster.wait_online(client, DEVICES)
    finally:
        client.close()


def run_dashboard(tmp_path: Path, browser: Callable[[], AbstractAsyncContextManager[Page]]) -> None:
    """The scenario in `browser()` against a gateway with three sim devices; on a failure, a screenshot and the
    page's text, console and gateway log in the report."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    cluster = HttpCluster(tmp_path, free_udp_port())
    try:
        cluster.clients(alice="sim/**")
        token = cluster.token("alice")
        cluster.start_http_gateway()
        cluster.start_sim(3, "--lease-ms", "2000")

        async def scenario() -> None:
            async with browser() as page:  # the devices boot while the browser starts
                await asyncio.to_thread(_wait_online, cluster)
                try:
                    await dashboard_scenario(page, cluster, token, shots)
                except Exception:
                    await page.screenshot(shots / "failure.png", full_page=True)
                    body = await page.evaluate("document.body.innerText")
                    print(f"page at failure ({shots / 'failure.png'}):\n{str(body)[:3000]}\n"
                          f"console: {page.errors}\ngateway log:\n{cluster.log('gateway', 'err')[-3000:]}")
                    raise
        run_scenario(scenario, SCENARIO_S)
    finally:
        cluster.close()
    print(f"screenshots: {shots}")


@pytest.mark.long
def test_dashboard_in_chromium(tmp_path, micropython):
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        if os.environ.get("CI") or os.environ.get("NDN_EDGE_REQUIRE_MICROPYTHON"):
            pytest.fail("playwright is not installed (the test extra: pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    _require(CHROMIUM, "chromium")
    run_dashboard(tmp_path, lambda: browsers.chromium(CHROMIUM, CHROMIUM_ARGS))


@pytest.mark.long
def test_dashboard_in_firefox(tmp_path, micropython):
    _require(FIREFOX, "firefox-esr")
    run_dashboard(tmp_path, lambda: browsers.firefox(FIREFOX, tmp_path / "firefox"))
