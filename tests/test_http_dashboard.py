"""The dashboard (`GET /`, ndn_edge/http/static) in a real headless Chromium (Debian's `chromium`, driven by
Playwright for Python) against a gateway process with three MicroPython sim devices: sign in, see the devices,
call a service from its form, start a long-running operation, watch a topic, see a device go offline when its
process is killed, on a desktop and on a phone's width. Screenshots of each state go to the test's folder."""
from __future__ import annotations

import os
import shutil
import signal

import pytest

from tests.httpclient import HttpCluster
from tests.support import free_udp_port

CHROMIUM = os.environ.get("NDN_EDGE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
DEVICES = ["/edge/sim/1", "/edge/sim/2", "/edge/sim/3"]


def _browser_or_skip():
    """Playwright and Chromium; a missing one fails in CI (`.ci/run` installs both) and skips elsewhere."""
    required = os.environ.get("CI") or os.environ.get("NDN_EDGE_REQUIRE_MICROPYTHON")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("playwright is not installed (the test extra: pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        if required:
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
        pytest.skip(f"{CHROMIUM} is missing")
    return sync_playwright


@pytest.mark.long
def test_dashboard_in_chromium(tmp_path, micropython):
    sync_playwright = _browser_or_skip()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    cluster = HttpCluster(tmp_path, free_udp_port())
    try:
        cluster.clients(alice="sim/**")
        token = cluster.token("alice")
        cluster.start_http_gateway()
        cluster.start_sim(3, "--lease-ms", "2000")
        client = cluster.connect("alice")
        try:
            cluster.wait_online(client, DEVICES)
        finally:
            client.close()
        etag_before = cluster.get("/api/v1/openapi.json").headers["etag"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page, failed, errors = None, True, []
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.on("pageerror", lambda err: errors.append(str(err)))
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

                page.goto(cluster.url + "/")
                page.wait_for_selector("#signin button")
                page.screenshot(path=shots / "01-sign-in.png")
                page.fill("#token", "ndne_000000000000_" + "x" * 43)  # a wrong token first
                page.click("#signin button")
                page.wait_for_function("document.querySelector('#signin-error').textContent.includes('refused')")
                page.fill("#token", token)
                page.click("#signin button")
                for n in (1, 2, 3):
                    page.wait_for_selector(f".device[data-device='sim/{n}'] .state.online", timeout=15000)
                assert page.locator(".device").count() == 3
                assert "signed in as alice" in page.inner_text("#who")
                page.wait_for_selector("#link.live")
                page.screenshot(path=shots / "02-three-devices.png")

                card = page.locator(".device[data-device='sim/2']")
                card.locator(".services-button").click()
                echo = card.locator("form[data-service='echo']")
                echo.locator("textarea").fill('{"greeting": "from the browser"}')
                echo.locator("button[type=submit]").click()
                page.wait_for_function("""document.querySelector(".device[data-device='sim/2'] form"""
                                       """[data-service='echo'] .result").textContent.includes('from the browser')""")
                temperature = card.locator("form[data-service='temperature']")
                temperature.locator("button[type=submit]").click()
                # a number, then where it came from ("25" for 25.0: JavaScript prints whole floats bare)
                page.wait_for_function("""/^\\d+(\\.\\d+)?\\n\\((from the device|cached)/.test("""
                                       """document.querySelector(".device[data-device='sim/2'] """
                                       """form[data-service='temperature'] .result").textContent)""")
                card.locator(".health-button").click()
                page.wait_for_selector(".device[data-device='sim/2'] dl.health dt:text('free heap')")
                slow = card.locator("form[data-service='slow']")
                slow.locator("input[name='seconds']").fill("1.5")
                slow.locator("button[type=submit]").click()
                page.wait_for_selector("#operations li[data-state='done']", timeout=20000)
                assert "sim/2/slow: done" in page.inner_text("#operations")
                page.screenshot(path=shots / "03-called-from-forms.png", full_page=True)

                page.fill("#topic", "sim/1/burst")
                page.click("#topic-form button")
                page.wait_for_function("document.querySelector('#topic-status').textContent.startsWith('watching')")
                burst = page.locator(".device[data-device='sim/1']")
                burst.locator(".services-button").click()
                burst.locator("form[data-service='burst'] input[name='n']").fill("4")
                burst.locator("form[data-service='burst'] button[type=submit]").click()
                page.wait_for_function("[...document.querySelectorAll('#messages li')]"
                                       ".some(li => li.textContent.includes('sim/1/burst = 4'))", timeout=15000)
                page.screenshot(path=shots / "04-published-value.png", full_page=True)

                for n in (1, 2):  # fold the service forms away, so that every device fits the screenshot
                    page.locator(f".device[data-device='sim/{n}'] .services-button").click()
                os.kill(cluster.device_pid(3), signal.SIGKILL)
                page.wait_for_selector(".device[data-device='sim/3'] .state.offline", timeout=20000)
                assert page.locator(".device[data-device='sim/1'] .state.online").count() == 1
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=shots / "05-device-offline.png")
                # the OpenAPI document follows: sim/3's services are gone, and with them the ETag
                doc = cluster.get("/api/v1/openapi.json")
                assert doc.headers["etag"] != etag_before
                assert not any(p.startswith("/call/sim/3/") for p in doc.json()["paths"])

                page.set_viewport_size({"width": 390, "height": 844})
                page.evaluate("window.scrollTo(0, 0)")
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, f"the page is {width} px wide on a 390 px phone"
                page.screenshot(path=shots / "06-phone.png")
                # the one expected failure: the wrong token's 401
                assert [e for e in errors if "status of 401" not in e] == [], errors
                failed = False
            finally:
                if failed and page is not None:  # what the page showed when it went wrong, for the failure report
                    page.screenshot(path=shots / "failure.png", full_page=True)
                    print(f"page at failure ({shots / 'failure.png'}):\n{page.inner_text('body')[:3000]}\n"
                          f"console: {errors}\ngateway log:\n{cluster.log('gateway', 'err')[-3000:]}")
                browser.close()
    finally:
        cluster.close()
    print(f"screenshots: {shots}")
