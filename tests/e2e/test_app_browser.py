"""Drive every page of the running app in headless Chromium; screenshots go to test-output/e2e/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "e2e"

pytestmark = pytest.mark.e2e

PAGES = {  # sidebar link -> (a heading on the page, minimum number of Plotly charts)
    "Merge": ("Merge step by step", 5),
    "Geometry": ("Geometry", 2),
    "Stability & plasticity": ("Stability and plasticity", 2),
    "Ranks": ("Rank sensitivity", 1),
    "Compare with the paper": ("Compare with the paper", 1),
}


def _by_css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def wait_idle(driver, timeout: float = 90.0) -> float:
    """Wait until the script run is over (the app's own run state) and stays over for a moment."""
    start = time.perf_counter()
    quiet_since = None
    while time.perf_counter() - start < timeout:
        apps = _by_css(driver, '[data-testid="stApp"]')
        state = apps[0].get_attribute("data-test-script-state") if apps else None
        if state == "notRunning":
            quiet_since = quiet_since or time.perf_counter()
            if time.perf_counter() - quiet_since > 0.6:
                return time.perf_counter() - start
        else:
            quiet_since = None
        time.sleep(0.1)
    raise AssertionError(f"the app did not finish running within {timeout} s (state {state!r})")


def rendered_charts(driver) -> int:
    """Plotly charts whose SVG has been drawn."""
    return sum(1 for chart in _by_css(driver, '[data-testid="stPlotlyChart"]') if _by_css_in(chart, ".main-svg"))


def _by_css_in(element, selector: str):
    from selenium.webdriver.common.by import By

    return element.find_elements(By.CSS_SELECTOR, selector)


def assert_healthy(driver, page: str) -> None:
    exceptions = _by_css(driver, '[data-testid="stException"]')
    assert not exceptions, f"{page}: exception shown: {exceptions[0].text[:500]}"
    errors = [e.text for e in _by_css(driver, '[data-testid="stAlertContentError"]')]
    assert not errors, f"{page}: error shown: {errors}"


def wait_for_charts(driver, minimum: int, timeout: float = 30.0) -> int:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        count = rendered_charts(driver)
        if count >= minimum:
            return count
        time.sleep(0.2)
    return rendered_charts(driver)


def screenshot(driver, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(OUTPUT / f"{name}.png"))


def open_page(driver, title: str) -> None:
    """Click the page's link in the sidebar navigation (same session, like a user)."""
    links = [a for a in _by_css(driver, '[data-testid="stSidebarNavLink"]') if a.text.strip().endswith(title)]
    assert links, f"no sidebar link {title!r}"
    links[0].click()
    time.sleep(0.3)


def click_button(driver, text: str) -> None:
    buttons = [b for b in _by_css(driver, '[data-testid="stBaseButton-primary"], button') if text in b.text]
    assert buttons, f"no button {text!r} on the page"
    buttons[0].click()


def nav_link_texts(driver) -> list[str]:
    """The sidebar's page links, read in one script call: the sidebar is re-rendered while the app
    switches navigation, and element handles taken before that go stale."""
    script = """return Array.from(document.querySelectorAll('[data-testid="stSidebarNavLink"]'))
                  .map(a => a.innerText.trim());"""
    return list(driver.execute_script(script) or [])


def test_a_deep_link_to_a_fresh_server_gets_the_apps_navigation(browser, app_url):
    """Runs first, on the just-started server: Streamlit would serve `pages/merge.py` alone (legacy
    multipage mode) to a first visitor of `/merge`; `pages/nav.py` routes the visit through `app.py`."""
    browser.get(f"{app_url}/merge")
    start = time.perf_counter()
    links: list[str] = []
    while time.perf_counter() - start < 60:
        links = nav_link_texts(browser)
        if any(link.endswith("Setup") for link in links):
            break
        time.sleep(0.2)
    wait_idle(browser)
    links = nav_link_texts(browser)
    assert any(link.endswith("Compare with the paper") for link in links), links
    assert not any(link in ("ui", "nav", "app") for link in links), f"legacy page list shown: {links}"
    assert_healthy(browser, "deep link")


def test_every_page_renders_and_a_merge_step_updates_the_charts(browser, app_url):
    timings: dict[str, float] = {}
    start = time.perf_counter()
    browser.get(app_url)
    while not any("Setup" in h.text for h in _by_css(browser, "h1")) and time.perf_counter() - start < 60:
        time.sleep(0.05)
    timings["first_paint_seconds"] = time.perf_counter() - start  # the page title is on screen
    wait_idle(browser)
    timings["first_screen_seconds"] = time.perf_counter() - start  # the whole Setup page is there
    assert "Setup" in browser.page_source
    assert "task models ready" in browser.page_source
    assert_healthy(browser, "setup")
    screenshot(browser, "1_setup")

    for number, (link, (heading, charts)) in enumerate(PAGES.items(), start=2):
        path = link.split()[0].lower()
        start = time.perf_counter()
        open_page(browser, link)
        wait_idle(browser)
        found = wait_for_charts(browser, charts)
        timings[f"{path}_page_seconds"] = time.perf_counter() - start
        assert heading in browser.page_source, f"{path}: heading {heading!r} missing"
        assert found >= charts, f"{path}: {found} rendered charts, expected at least {charts}"
        assert_healthy(browser, path)
        if path == "merge":
            assert "Step 0 / 3" in browser.page_source
            before = _heatmap_values(browser)
            start = time.perf_counter()
            click_button(browser, "Merge next task")
            wait_idle(browser)
            wait_for_charts(browser, charts)
            timings["merge_step_seconds"] = time.perf_counter() - start
            assert "Step 1 / 3" in browser.page_source
            assert_healthy(browser, "merge after a step")
            after = _heatmap_values(browser)
            assert after != before and any(v is not None for v in after), "the accuracy matrix did not change"
            click_button(browser, "Merge next task")
            wait_idle(browser)
            assert "Step 2 / 3" in browser.page_source
            assert rendered_charts(browser) >= charts
        screenshot(browser, f"{number}_{path}")
    (OUTPUT / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")


def _heatmap_values(driver) -> list:
    """The z values of the accuracy-matrix heatmap, read from Plotly's own figure object."""
    script = """
    const plots = document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot');
    for (const plot of plots) {
      const title = plot.layout && plot.layout.title && plot.layout.title.text;
      if (title && title.includes('Accuracy matrix')) { return plot.data.map(t => t.z); }
    }
    return null;
    """
    values = driver.execute_script(script)
    return [cell for trace in values or [] for row in (trace or []) for cell in (row or [])]
