"""What the browser tests share: finding elements, waiting for the app's run to end, pages,
buttons and screenshots (the server and Chromium come from `conftest.py`)."""

from __future__ import annotations

import time
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "e2e"


def by_css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def wait_idle(driver, timeout: float = 90.0) -> float:
    """Wait until the script run is over (the app's own run state) and stays over for a moment."""
    start = time.perf_counter()
    quiet_since = None
    while time.perf_counter() - start < timeout:
        apps = by_css(driver, '[data-testid="stApp"]')
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
    return sum(1 for chart in by_css(driver, '[data-testid="stPlotlyChart"]') if by_css_in(chart, ".main-svg"))


def by_css_in(element, selector: str):
    from selenium.webdriver.common.by import By

    return element.find_elements(By.CSS_SELECTOR, selector)


def assert_healthy(driver, page: str) -> None:
    exceptions = by_css(driver, '[data-testid="stException"]')
    assert not exceptions, f"{page}: exception shown: {exceptions[0].text[:500]}"
    errors = [e.text for e in by_css(driver, '[data-testid="stAlertContentError"]')]
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
    links = [a for a in by_css(driver, '[data-testid="stSidebarNavLink"]') if a.text.strip().endswith(title)]
    assert links, f"no sidebar link {title!r}"
    links[0].click()
    time.sleep(0.3)


def click_button(driver, text: str) -> None:
    buttons = [b for b in by_css(driver, '[data-testid="stBaseButton-primary"], button') if text in b.text]
    assert buttons, f"no button {text!r} on the page"
    buttons[0].click()


def click_exact(driver, text: str) -> None:
    """Click the enabled button labelled exactly `text` (found and clicked in one script call)."""
    clicked = driver.execute_script("""
        const b = Array.from(document.querySelectorAll('button'))
          .find(b => b.innerText.trim() === arguments[0] && !b.disabled);
        if (b) { b.click(); return true; } return false;""", text)
    assert clicked, f"no enabled button {text!r}"


def page_state(driver) -> dict:
    """The step counter ("Step k / N") and whether each button is enabled, read in one script call:
    the page is redrawn after every step, and element handles taken before that go stale."""
    return driver.execute_script("""
        const match = document.body.innerText.match(/Step (\\d+) \\/ \\d+/);
        const buttons = {};
        for (const b of document.querySelectorAll('button')) { buttons[b.innerText.trim()] = !b.disabled; }
        return {step: match ? parseInt(match[1]) : null, buttons: buttons};""")


def step_shown(driver) -> int | None:
    return page_state(driver)["step"]


def wait_for_step(driver, step: int, timeout: float = 120.0) -> None:
    """Wait until the page shows `step` and no job runs (Stop is off)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        state = page_state(driver)
        if state["step"] == step and not state["buttons"].get("Stop"):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout} s (shown: {step_shown(driver)})")


def click_when_enabled(driver, text: str, timeout: float = 180.0) -> None:
    """`click_exact` once the button is there and enabled (a step of a run may still be running)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            return click_exact(driver, text)
        except AssertionError:
            time.sleep(0.5)
    labels = driver.execute_script("return Array.from(document.querySelectorAll('button'))"
                                   ".map(b => b.innerText.trim() + (b.disabled ? ' (disabled)' : ''));")
    shown = driver.execute_script("return document.body.innerText")[:600]
    raise AssertionError(f"no enabled button {text!r} within {timeout} s; buttons: {[b for b in labels if b]}; "
                         f"page: {shown!r}")
