"""The dashboard in headless Chromium (selenium + chromium-driver, Debian packages):
log in with the admin token, visit every page in English and Chinese, assert on the
rendered DOM and save a screenshot per page under the test's tmp dir."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.inventory.schemas import DemandIn, ModelIn
from scheduler.inventory.service import InventoryService
from tests.observability.stack import ADMIN_TOKEN, MODEL, Stack, run_stack

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _models(inventory: InventoryService) -> None:
    inventory.add_model(
        ModelIn(name="qwen2.5-7b-instruct", source="Qwen/Qwen2.5-7B-Instruct", quants=["fp16"]),
        "test",
    )
    inventory.set_demand("qwen2.5-7b-instruct", DemandIn(output_tokens_per_s=200.0), "test")


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("chromium / chromium-driver not installed (scripts/system-deps.sh)")
    profile = tempfile.mkdtemp(prefix="cl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1100",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _traffic(stack: Stack) -> dict[str, int]:
    """Two tenants send requests for ~2 s (some concurrent); returns completion tokens."""
    tokens = {"acme": 0, "beta": 0}
    keys = {name: stack.tenant_key(name) for name in tokens}
    lock = threading.Lock()

    def run(name: str, n: int) -> None:
        client = stack.openai(keys[name])
        for _ in range(n):
            r = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=12
            )
            with lock:
                tokens[name] += r.usage.completion_tokens if r.usage else 0
            time.sleep(0.02)

    threads = [threading.Thread(target=run, args=(n, k)) for n, k in (("acme", 40), ("beta", 15))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stack.wait_usage_flushed()
    return tokens


def _click(driver: Any, element_id: str) -> None:
    """Click and wait until the browser has replaced the page (clicks return early)."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 10).until(expected_conditions.staleness_of(old))


def _rows(driver: Any, table_id: str) -> list[list[str]]:
    table = driver.find_element(By.ID, table_id)
    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]


def _shot(driver: Any, folder: Path, name: str) -> None:
    driver.save_screenshot(str(folder / f"{name}.png"))
    assert (folder / f"{name}.png").stat().st_size > 5000


def test_dashboard_pages_in_chromium(tmp_path: Path, browser: Any) -> None:
    started = time.monotonic()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with run_stack(tmp_path, setup=_models) as stack:
        tokens = _traffic(stack)
        base = stack.url + "/dashboard"
        browser.get(base)  # not logged in: sent to the login form
        assert browser.current_url.startswith(base + "/login")
        _shot(browser, shots, "login")

        # a tenant key is refused with its own message
        browser.find_element(By.ID, "token").send_keys(stack.tenant_key("intruder"))
        _click(browser, "login-submit")
        assert "Tenant API keys cannot open" in browser.find_element(By.ID, "login-error").text
        browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        _click(browser, "login-submit")
        assert browser.current_url.rstrip("/") == base
        cookie = browser.get_cookie("cl_dashboard")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert ADMIN_TOKEN not in cookie["value"]

        # fleet overview
        assert browser.find_element(By.TAG_NAME, "h1").text == "Fleet overview"
        kpi = {
            k: float(browser.find_element(By.ID, f"kpi-{k}").get_attribute("data-value"))
            for k in ("devices", "tokens", "requests", "full")
        }
        assert kpi["devices"] == 12 and kpi["tokens"] == sum(tokens.values())
        assert kpi["requests"] == 55 and kpi["full"] > 0
        assert dict((r[0], r[1]) for r in _rows(browser, "t-state")) == {
            "admitted": "8", "draining": "2", "registered": "2"
        }  # fmt: skip
        assert {r[0] for r in _rows(browser, "t-site")} == {"guian", "shanghai"}
        for chart in ("chart-throughput", "chart-tokens-per-yuan", "chart-utilisation"):
            path = browser.find_element(By.CSS_SELECTOR, f"#{chart} path.series")
            assert path.get_attribute("d").count("L") == 29  # 30 buckets
        _shot(browser, shots, "overview")

        _click(browser, "nav-classes")
        rows = {r[0]: r for r in _rows(browser, "t-classes")}
        assert set(rows) == {"guian/tesla-t4", "shanghai/tesla-v100-pcie-32gb"}
        assert rows["guian/tesla-t4"][8] == f"{sum(tokens.values()):,}"
        assert rows["guian/tesla-t4"][7] == "tdp"
        assert {r[0] for r in _rows(browser, "t-sites")} == {"guian", "shanghai"}
        _shot(browser, shots, "classes")

        _click(browser, "nav-models")
        assert _rows(browser, "t-replicas") == [[MODEL, "2", "2"]]
        assert [r[0] for r in _rows(browser, "t-endpoints")] == ["r0", "r1"]
        _shot(browser, shots, "models")

        _click(browser, "nav-tenants")
        tenants = {r[0]: r for r in _rows(browser, "t-tenants")}
        assert tenants["acme"][1:4] == ["40", tenants["acme"][2], f"{tokens['acme']:,}"]
        assert tenants["beta"][1] == "15" and tenants["intruder"][1] == "0"
        _shot(browser, shots, "tenants")

        _click(browser, "nav-audit")
        audit = _rows(browser, "t-audit")
        assert any("hardware refresh" in r[5] and "draining" in r[3] for r in audit)
        assert any("admitted" in r[3] for r in audit)
        _shot(browser, shots, "audit")

        _click(browser, "nav-whatif")
        field = browser.find_element(By.ID, "d0")
        assert float(field.get_attribute("value")) == 200.0
        field.clear()
        field.send_keys("400")
        _click(browser, "whatif-run")
        result = _rows(browser, "t-whatif")
        assert result[0][0] == "optimiser" and len(result) >= 2  # plus the baselines
        served = float(result[0][3].replace(",", ""))
        assert 0 < served <= 400.0 + 1e-6
        assert _rows(browser, "t-variants")
        _shot(browser, shots, "whatif")

        # Chinese labels
        browser.get(base + "?lang=zh")
        assert browser.find_element(By.TAG_NAME, "h1").text == "集群总览"
        assert "每元" in browser.find_element(By.ID, "chart-tokens-per-yuan").text
        _shot(browser, shots, "overview-zh")
        _click(browser, "logout")
        browser.get(base + "/audit")
        assert "/dashboard/login" in browser.current_url
    print(f"\nscreenshots in {shots}; {time.monotonic() - started:.1f} s")
