"""The status page in a real headless Chromium, driven by selenium (slow tier).

The router is the scripted harness (tests/router/conftest.py) served by a real uvicorn on a
free port in a thread: its model answers after a delay, so a cold model is seen waiting and
then ready, in the same page load. Needs Debian's chromium and chromium-driver
(`make browser-packages`). Screenshots go to the test's tmp_path; their paths are printed.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from inference_bundle.router.app import create_app
from inference_bundle.router.auth import create_api_key
from tests.router.conftest import Harness, envelope

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
TINY = "local/tiny-llama"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CHAT = "/resource_server/local/vllm/v1/chat/completions"
WAIT_S = 20


class ScriptedListing:
    """The local cluster's scheduler jobs, as the test sets them (no scheduler runs)."""

    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []

    async def jobs(self, cluster: str) -> dict[str, Any]:
        return {"jobs": list(self.listed) if cluster == "local" else []}


@dataclass
class Served:
    url: str
    harness: Harness
    listing: ScriptedListing
    admin_key: str

    def endpoint_of(self, model: str) -> str:
        routes = self.harness.service.table.routes("local")
        return next(r.endpoint_name for r in routes if r.model == model)


@pytest.fixture
def router(make_harness: Callable[..., Harness], tmp_path: Path) -> Iterator[Served]:
    """The harness's service on a real uvicorn in a thread (its lifespan runs too)."""
    harness = make_harness(batches={"prestart_engines": False})
    listing = ScriptedListing()
    harness.service.job_listing = harness.service.dispatcher.job_listing = listing  # type: ignore[assignment]
    admin_key = create_api_key(tmp_path / "keys.json", "root@anl.gov", admin=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(harness.service), loop="asyncio", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert time.monotonic() < deadline, "the router did not start"
        time.sleep(0.05)
    port = sock.getsockname()[1]
    yield Served(f"http://127.0.0.1:{port}", harness, listing, admin_key)
    server.should_exit = True
    thread.join(WAIT_S)
    sock.close()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, (
        "chromium or chromedriver is missing: `make browser-packages` installs Debian's "
        "chromium and chromium-driver"
    )
    options = Options()
    options.binary_location = chromium
    # As root (the test machines), Chromium runs only without its sandbox.
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1200"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def queue_minilm(served: Served, **more: Any) -> None:
    """MiniLM waits for a node: job 4242 queued, the scheduler's start 10 min ahead."""
    served.harness.service.tracker.begin(served.endpoint_of(MINILM))
    served.listing.listed = [
        {
            "endpoint": served.endpoint_of(MINILM),
            "job_id": "4242",
            "state": "queued",
            "scheduler_state": "queued",
            "reason": "Priority",
            "nodes": [],
            "estimated_start": time.time() + 600,
            **more,
        }
    ]


def sign_in(driver: WebDriver, key: str) -> None:
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()


# Read in one script call: the page replaces its tables on every refresh, so an element
# found by one WebDriver call may be gone (stale) by the next.
_TEXT = "const found = document.querySelector(arguments[0]); return found ? found.innerText : null;"


def text(driver: WebDriver, css: str) -> str | None:
    """The rendered text of the element ``css`` selects; None while there is none."""
    found = driver.execute_script(_TEXT, css)
    return None if found is None else str(found).strip()


def cell(driver: WebDriver, model: str, css: str) -> str:
    """The text of a cell in the model's row; "" while the row is not there."""
    return text(driver, f'tr[data-model="{model}"] {css}') or ""


def wait_for(driver: WebDriver, what: str, check: Callable[[WebDriver], bool]) -> None:
    WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        check, f"the page did not show {what} within {WAIT_S} s"
    )


def screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page (the window made as tall as the page), saved and its path printed."""
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1400, int(height) + 100)
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    assert path.stat().st_size > 10_000
    print(f"status page screenshot: {path}")


def severe_logs(driver: webdriver.Chrome) -> list[str]:
    """The browser console's errors: a script the page's CSP blocked would be one."""
    logs: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [str(entry["message"]) for entry in logs if entry["level"] == "SEVERE"]


def test_a_user_sees_a_cold_model_turn_ready_without_a_reload(
    router: Served, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    h = router.harness
    h.endpoint.delay_s = 4.0  # the "start" the page watches
    browser.get(f"{router.url}/status?refresh=1")
    sign_in(browser, h.key)
    wait_for(browser, f"{TINY} cold", lambda d: cell(d, TINY, ".state") == "cold")
    assert text(browser, "#models-sophia caption") == "sophia"
    assert "AuroraGPT" not in browser.page_source  # a group's model, not this user's
    assert browser.find_element(By.ID, "summary").text.startswith("Signed in as alice@anl.gov:")
    # A non-admin sees no usage and no errors.
    assert not browser.find_element(By.ID, "admin").is_displayed()
    assert text(browser, "#usage-by-user") is None
    assert text(browser, "#last-errors") is None

    # Another model waits in the scheduler's queue: its job and the scheduler's estimate.
    queue_minilm(router, queue_position=2)
    wait_for(
        browser,
        "the queued job's estimate",
        lambda d: "queue position 2" in cell(d, MINILM, ".eta"),
    )
    assert "scheduler start" in cell(browser, MINILM, ".eta")
    assert "ready about" in cell(browser, MINILM, ".eta")
    assert cell(browser, MINILM, ".job").startswith("4242 (queued)")

    browser.execute_script("window.sameLoad = true;")
    answers: list[httpx.Response] = []
    chat = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}
    request = threading.Thread(
        target=lambda: answers.append(
            httpx.post(router.url + CHAT, json=chat, headers=h.auth, timeout=WAIT_S)
        )
    )
    request.start()
    wait_for(
        browser,
        f"{TINY} waiting",
        lambda d: cell(d, TINY, ".state") in ("queued", "starting"),
    )
    router.listing.listed.append(
        {
            "endpoint": router.endpoint_of(TINY),
            "job_id": "4243",
            "state": "starting",
            "scheduler_state": "running",
            "reason": None,
            "nodes": ["node-7"],
            "started_at": time.time(),
        }
    )
    wait_for(browser, f"{TINY}'s job", lambda d: cell(d, TINY, ".nodes") == "node-7")
    assert cell(browser, TINY, ".job") == "4243 (running)"
    wait_for(browser, f"{TINY} ready", lambda d: cell(d, TINY, ".state") == "ready")
    assert browser.execute_script("return window.sameLoad === true;"), "the page was reloaded"
    request.join(WAIT_S)
    assert [a.status_code for a in answers] == [200]
    # A replica the router placed on a node is shown with its node, state and load.
    replicas = router.harness.service.dispatcher.replicas.of(router.endpoint_of(TINY))
    placed = replicas.claim("demand", time.time())
    assert placed is not None
    replicas.placed(placed.index, "node-8", "server-8", 0.0, time.time())
    wait_for(
        browser,
        f"{TINY}'s replica",
        lambda d: cell(d, TINY, ".replicas") == "node-8: ready, 0 in flight",
    )
    wait_for(browser, "the request counted", lambda d: cell(d, TINY, ".requests") == "1")
    assert cell(browser, TINY, ".tokens") == "5"
    assert "ready" in cell(browser, TINY, ".eta")
    assert cell(browser, TINY, ".queue").startswith("0 waiting")  # nothing waits for a place
    screenshot(browser, tmp_path / "status-page-user.png")
    assert severe_logs(browser) == []


def test_an_admin_sees_usage_and_errors_and_a_user_key_hides_them(
    router: Served, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    h = router.harness
    chat = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(router.url + CHAT, json=chat, headers=h.auth).status_code == 200
    h.endpoint.handler = lambda spec, request: envelope(
        502, {"error": {"message": "the model server fell over", "type": "server_error"}}
    )
    assert httpx.post(router.url + CHAT, json=chat, headers=h.auth).status_code == 502

    browser.get(f"{router.url}/status?refresh=1")
    sign_in(browser, router.admin_key)
    wait_for(browser, "the usage table", lambda d: text(d, "#usage-by-user") is not None)
    assert browser.find_element(By.ID, "admin").is_displayed()
    users = text(browser, "#usage-by-user") or ""
    assert "alice@anl.gov" in users
    wait_for(browser, "the last error", lambda d: text(d, "#last-errors") is not None)
    errors = text(browser, "#last-errors") or ""
    assert "alice@anl.gov" in errors and "502" in errors
    assert (text(browser, "#usage-by-group caption") or "") == "By group"
    assert "(admin)" in browser.find_element(By.ID, "summary").text
    screenshot(browser, tmp_path / "status-page-admin.png")

    # The same tab, another key: a user's view has no usage table any more.
    sign_in(browser, h.key)
    wait_for(browser, "the usage table gone", lambda d: text(d, "#usage-by-user") is None)
    assert not browser.find_element(By.ID, "admin").is_displayed()
    wait_for(
        browser,
        "the user's summary",
        lambda d: d.find_element(By.ID, "summary").text.startswith("Signed in as alice@anl.gov"),
    )
    # The key stays in the tab's sessionStorage only.
    stored = browser.execute_script(
        "return [sessionStorage.getItem('inference-bundle-status-key'), localStorage.length];"
    )
    assert stored == [h.key, 0]
    assert severe_logs(browser) == []


# What the page drew for one model's series: the SVG's first minute, and (minute, value) for
# each bar or dot; None while it has not drawn it.
_DRAWN = """
const row = `tr[data-model="${arguments[0]}"]`;
const drawn = document.querySelector(`${row} svg[data-series="${arguments[1]}"]`);
if (!drawn || drawn.getBoundingClientRect().width === 0) return null;
const marks = [...drawn.querySelectorAll("rect.bar, circle.point")];
return [drawn.dataset.start, marks.map((m) => [Number(m.dataset.minute), Number(m.dataset.value)])];
"""


def drawn(driver: WebDriver, model: str, series: str) -> list[Any] | None:
    found = driver.execute_script(_DRAWN, model, series)
    return None if found is None else [found[0], [tuple(mark) for mark in found[1]]]


def in_status(served: Served, key: str, series: str) -> list[Any]:
    """The tiny model's series as /v1/status gives it: the first minute and each minute's
    value, where it is not 0."""
    body = httpx.get(f"{served.url}/v1/status", headers={"Authorization": f"Bearer {key}"}).json()
    found = next(m for m in body["clusters"]["local"]["models"] if m["id"] == TINY)
    minutes = found["last_hour_by_minute"]
    values = minutes[series]
    return [minutes["start"], [(n, v) for n, v in enumerate(values) if v]]


def test_the_charts_draw_each_models_last_hour_from_status_and_errors_carry_request_ids(
    router: Served, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    h = router.harness
    chat = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        assert httpx.post(router.url + CHAT, json=chat, headers=h.auth).status_code == 200
    h.endpoint.handler = lambda spec, request: envelope(
        502, {"error": {"message": "the model server fell over", "type": "server_error"}}
    )
    failed = httpx.post(router.url + CHAT, json=chat, headers=h.auth)
    assert failed.status_code == 502
    # Another model waits: its time-to-ready line runs against the scheduler's estimate.
    queue_minilm(router)

    def same_as_status(series: str) -> Callable[[WebDriver], bool]:
        return lambda d: drawn(d, TINY, series) == in_status(router, router.admin_key, series)

    browser.get(f"{router.url}/status?refresh=1")
    sign_in(browser, router.admin_key)
    for series in ("requests", "errors"):
        # Compared again on each poll: a new minute may begin between the page and the JSON.
        wait_for(browser, f"the {series} chart as /v1/status gives it", same_as_status(series))
    requests = drawn(browser, TINY, "requests")
    assert requests is not None and sum(value for _, value in requests[1]) == 4
    latency = drawn(browser, TINY, "latency")
    assert latency is not None and len(latency[1]) >= 1  # the minutes with a success
    assert all(value > 0 for _, value in latency[1])
    label = browser.execute_script(
        f'return document.querySelector(\'tr[data-model="{TINY}"] svg[data-series="errors"]\')'
        ".getAttribute('aria-label');"
    )
    assert label == "Errors a minute, the last hour: 1 in all, peak 1 a minute"

    ready_line = browser.execute_script(
        "const line = document.querySelector(arguments[0]);"
        "return line ? [line.dataset.waitedS, line.dataset.wholeS, line.getAttribute('aria-label')]"
        " : null;",
        f'tr[data-model="{MINILM}"] svg.time-to-ready',
    )
    assert ready_line is not None, "no time-to-ready line for the waiting model"
    waited, whole, said = ready_line
    assert int(waited) >= 0 and int(whole) >= 600 and said.startswith("Waited ")
    assert text(browser, f'tr[data-model="{TINY}"] svg.time-to-ready') is None  # ready: none

    # The error's request id, as the user's answer and the access log carry it.
    wait_for(browser, "the last error", lambda d: text(d, "#last-errors td.request-id") is not None)
    assert text(browser, "#last-errors td.request-id") == failed.headers["x-request-id"]
    screenshot(browser, tmp_path / "status-page-charts.png")
    assert severe_logs(browser) == []
