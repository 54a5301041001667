"""The live Geometry page in a real browser: two merge steps give the heatmaps a second column and
an animation over both steps (the server and Chromium come from `conftest.py`)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.helpers import OUTPUT, assert_healthy, by_css, click_when_enabled, wait_for_step, wait_idle

pytestmark = pytest.mark.e2e

# every Plotly figure on the page with its title, heatmap x values and frame names, read from
# Plotly's own objects (the figure as the browser drew it, not the HTML around it)
FIGURES = """
return Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')).map(plot => ({
  title: (plot.layout && plot.layout.title && plot.layout.title.text) || '',
  heatmap_x: (plot.data || []).filter(t => t.type === 'heatmap').map(t => Array.from(t.x || [])),
  frames: ((plot._transitionData && plot._transitionData._frames) || []).map(f => f.name),
  buttons: Array.from(plot.querySelectorAll('.updatemenu-button')).map(b => b.textContent.trim()),
}));
"""


def _live_heatmaps(driver, timeout: float = 30.0) -> list[dict]:
    """The per-step heatmap figures (titles "update affinity ..." / "merged affinity ...")."""
    start = time.perf_counter()
    found: list[dict] = []
    while time.perf_counter() - start < timeout:
        found = [f for f in driver.execute_script(FIGURES) or [] if "mean over layers" in f["title"]]
        if found and all(f["heatmap_x"] for f in found):
            return found
        time.sleep(0.2)
    return found


def test_two_merge_steps_on_the_geometry_page_add_a_column_and_an_animation_frame(browser, app_url):
    # runs are shared per configuration by every browser session: the paper's order 2 is one the other
    # browser tests do not use, and Reset starts it at step 0 whatever ran before
    browser.get(f"{app_url}/geometry?paper=2")
    wait_idle(browser)
    assert any("Geometry" in h.text for h in by_css(browser, "h1")), "the deep link did not open the Geometry page"
    if "Step 0 /" not in browser.find_element("tag name", "body").text:
        click_when_enabled(browser, "Reset", timeout=120.0)
        time.sleep(0.3)
        wait_idle(browser)
    assert_healthy(browser, "Geometry")
    toggles = [t for t in by_css(browser, '[data-testid="stCheckbox"]')  # Streamlit's toggles are checkboxes
               if "Principal angles" in (t.text or t.get_attribute("aria-label") or "")]
    assert toggles, "no toggle for the principal angles and spectra"
    toggles[0].click()  # on before the first step: both steps get angles (from step 2) and spectra
    time.sleep(0.3)
    wait_idle(browser)
    columns = []
    for step in (1, 2):
        click_when_enabled(browser, "Merge next task")
        # the step runs in the background and the page polls it once a second, so the page is idle
        # between polls while the step still runs: wait for the step counter, then for the redraw
        wait_for_step(browser, step, timeout=180.0)
        wait_idle(browser, timeout=180.0)
        assert_healthy(browser, "Geometry")
        heatmaps = _live_heatmaps(browser)
        assert len(heatmaps) == 2, [f["title"] for f in heatmaps]  # update and merged affinity
        columns.append(heatmaps[0]["heatmap_x"])
    assert columns[0] == [["step 1"], ["step 1"]]  # one heatmap per method (nufilt, opcm)
    assert columns[1] == [["step 1", "step 2"], ["step 1", "step 2"]]
    assert all(f["frames"] == ["1", "2"] for f in heatmaps)  # one animation frame per step
    assert any("Play" in label for label in heatmaps[0]["buttons"]), heatmaps[0]["buttons"]
    titles = [f["title"] for f in browser.execute_script(FIGURES)]
    assert any("Principal angles" in title for title in titles) and any("Spectrum" in title for title in titles)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    size = browser.get_window_size()
    try:
        for width in (1600, 1000):  # the widths the docs' screenshots are checked at
            browser.set_window_size(width, 2400)
            time.sleep(1.0)  # Plotly redraws on resize
            assert_healthy(browser, "Geometry")
            browser.save_screenshot(str(OUTPUT / f"geometry_after_two_steps_{width}.png"))
    finally:
        browser.set_window_size(size["width"], size["height"])
