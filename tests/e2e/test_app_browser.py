"""Drive every page of the running app in headless Chromium; screenshots go to test-output/e2e/."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.helpers import (
    OUTPUT,
    assert_healthy,
    by_css,
    click_button,
    click_exact,
    open_page,
    page_state,
    rendered_charts,
    screenshot,
    step_shown,
    wait_for_charts,
    wait_for_step,
    wait_idle,
)

pytestmark = pytest.mark.e2e

PAGES = {  # sidebar link -> (a heading on the page, minimum number of Plotly charts)
    "Merge": ("Merge step by step", 5),
    "Geometry": ("Geometry", 2),
    "Stability & plasticity": ("Stability and plasticity", 2),
    "Ranks": ("Rank sensitivity", 1),
    "Compare with the paper": ("Compare with the paper", 1),
}


def nav_link_texts(driver) -> list[str]:
    """The sidebar's page links, read in one script call: the sidebar is re-rendered while the app
    switches navigation, and element handles taken before that go stale."""
    script = """return Array.from(document.querySelectorAll('[data-testid="stSidebarNavLink"]'))
                  .map(a => a.innerText.trim());"""
    return list(driver.execute_script(script) or [])


def test_a_deep_link_to_a_fresh_server_opens_its_page_with_its_choices(browser, app_url):
    """Runs first, on the just-started server: Streamlit would serve `pages/merge.py` alone (legacy
    multipage mode) to a first visitor of `/merge`; `pages/nav.py` routes the visit through `app.py`,
    which opens the Merge page with the link's Setup choices."""
    browser.get(f"{app_url}/merge?methods=nufilt,task_arithmetic")
    start = time.perf_counter()
    while time.perf_counter() - start < 90 and "Merge step by step" not in browser.page_source:
        time.sleep(0.2)
    wait_idle(browser)
    links = nav_link_texts(browser)
    assert any(link.endswith("Compare with the paper") for link in links), links
    assert not any(link in ("ui", "nav", "app") for link in links), f"legacy page list shown: {links}"
    assert "Merge step by step" in browser.page_source, "the deep link landed elsewhere"
    assert "methods: nufilt, task_arithmetic" in browser.page_source  # the sidebar's summary of the choices
    assert "methods=nufilt%2Ctask_arithmetic" in browser.current_url or "methods=nufilt,task_arithmetic" in (
        browser.current_url)
    assert_healthy(browser, "deep link")


def test_every_page_renders_and_a_merge_step_updates_the_charts(browser, app_url):
    timings: dict[str, float] = {}
    start = time.perf_counter()
    browser.get(app_url)
    while not any("Setup" in h.text for h in by_css(browser, "h1")) and time.perf_counter() - start < 60:
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
            wait_for_step(browser, 1)  # the step runs in the background; the page reruns when it is done
            wait_idle(browser)
            wait_for_charts(browser, charts)
            timings["merge_step_seconds"] = time.perf_counter() - start
            assert "Step 1 / 3" in browser.page_source
            assert_healthy(browser, "merge after a step")
            after = _heatmap_values(browser)
            assert after != before and any(v is not None for v in after), "the accuracy matrix did not change"
            click_button(browser, "Merge next task")
            wait_for_step(browser, 2)
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
      if (title && title.includes('Accuracy matrix')) {
        // Plotly keeps a NumPy-encoded z ({dtype, bdata, shape}) decoded in `_inputArray`: rows of typed arrays
        return plot.data.map(t => {
          const z = t.z && t.z._inputArray ? t.z._inputArray : (t.z || []);
          const rows = Array.isArray(z) ? z : Object.keys(z).filter(k => /^\\d+$/.test(k)).map(k => z[k]);
          return rows.map(row => Array.from(row || []).map(v => Number.isNaN(v) ? null : v));
        });
      }
    }
    return null;
    """
    values = driver.execute_script(script)
    return [cell for trace in values or [] for row in (trace or []) for cell in (row or [])]


# ---------------------------------------------------------------- runs: streaming, reloads, clicks


def busy(driver) -> bool:
    return bool(page_state(driver)["buttons"].get("Stop"))


RECORDER = r"""
window.__nufiltSeen = {cells: {}, stop: false};
const filledCells = () => {
  for (const plot of document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')) {
    const title = plot.layout && plot.layout.title && plot.layout.title.text;
    if (!(title && title.includes('Accuracy matrix'))) continue;
    let count = 0;
    for (const trace of plot.data) {
      const z = trace.z && trace.z._inputArray ? trace.z._inputArray : (trace.z || []);
      const rows = Array.isArray(z) ? z : Object.keys(z).filter(k => /^\d+$/.test(k)).map(k => z[k]);
      for (const row of rows) for (const v of Array.from(row || [])) if (v !== null && !Number.isNaN(v)) count++;
    }
    return count;
  }
  return 0;
};
setInterval(() => {
  const match = document.body.innerText.match(/Step (\d+) \/ \d+/);
  if (!match) return;
  const cells = filledCells(), seen = window.__nufiltSeen;
  seen.cells[match[1]] = Math.max(seen.cells[match[1]] || 0, cells);
  const stop = Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Stop');
  seen.stop = seen.stop || Boolean(stop && !stop.disabled);
}, 100);
"""


def open_run(driver, app_url: str, query: str) -> None:
    """The Merge page of a run of its own (the query makes its configuration differ from the others)."""
    driver.get(f"{app_url}/merge?{query}")
    start = time.perf_counter()
    while step_shown(driver) is None and time.perf_counter() - start < 90:
        time.sleep(0.2)
    wait_idle(driver)


def test_run_to_the_end_redraws_the_charts_after_every_step_and_has_a_stop_button(browser, app_url):
    open_run(browser, app_url, "methods=opcm,nufilt")  # a configuration no other test uses
    assert step_shown(browser) == 0
    # a recorder inside the page (selenium's own polling is too slow on a loaded machine): every 100 ms,
    # the step shown -> the most accuracy-matrix cells drawn with it, and whether Stop was enabled
    browser.execute_script(RECORDER)
    click_exact(browser, "Run to the end")
    start = time.perf_counter()
    while time.perf_counter() - start < 240:
        state = page_state(browser)
        if state["step"] == 3 and not state["buttons"].get("Stop"):
            break
        time.sleep(0.5)
    seen = browser.execute_script("return window.__nufiltSeen;")
    filled = {int(step): cells for step, cells in seen["cells"].items()}
    assert 3 in filled, filled
    middle = [step for step in (1, 2) if step in filled]
    assert middle, f"no intermediate step was on screen: {filled}"  # before: nothing until the last step
    steps = sorted(filled)
    assert filled[3] > 0 and all(filled[a] <= filled[b] for a, b in zip(steps, steps[1:], strict=False)), filled
    # the job waits for the following page to draw each step (RunJob.pace): the accuracy matrix of
    # steps 1 and 2 was on screen, with 2 and 2 + 2 cells per method (before the pacing, on the loaded
    # box, the matrix was drawn only at the last step)
    assert filled.get(1, 0) >= 2 and filled.get(2, 0) >= 6, f"intermediate charts not drawn: {filled}"
    assert seen["stop"], "Stop was never enabled during the run"
    wait_idle(browser)
    assert_healthy(browser, "run to the end")
    (OUTPUT / "run_to_the_end.txt").write_text(f"filled accuracy-matrix cells per step on screen: {filled}\n")

    names = _legend_names(browser, "Per-task accuracy")
    for task in ("ring-count", "bar-position", "blob-quadrant"):  # the micro zoo's three tasks
        assert any(task in name for name in names), f"task {task} missing from the per-task legend: {names}"
    screenshot(browser, "run_to_the_end")


def test_a_reload_restores_the_step_and_the_choices(browser, app_url):
    open_run(browser, app_url, "methods=task_arithmetic,opcm")
    for step in (1, 2):
        click_exact(browser, "Merge next task")
        wait_for_step(browser, step)
    browser.refresh()
    start = time.perf_counter()
    while step_shown(browser) is None and time.perf_counter() - start < 90:
        time.sleep(0.2)
    wait_idle(browser)
    assert step_shown(browser) == 2, "the reload lost the run's step"
    assert "methods=task_arithmetic" in browser.current_url
    assert "methods: task_arithmetic, opcm" in browser.page_source  # the sidebar's summary of the choices
    assert_healthy(browser, "after a reload")


def test_a_double_click_merges_the_one_step_it_asked_for_or_says_why_not(browser, app_url):
    from selenium.webdriver.common.action_chains import ActionChains

    open_run(browser, app_url, "methods=opcm,task_arithmetic")
    button = next(b for b in by_css(browser, "button") if b.text.strip() == "Merge next task")
    ActionChains(browser).double_click(button).perform()
    time.sleep(1.0)
    wait_for_step(browser, 1)
    wait_idle(browser)
    refused = "the click was ignored" in browser.page_source or "nothing was merged" in browser.page_source
    assert step_shown(browser) == 1, f"a double click on the step-0 page gave step {step_shown(browser)}"
    (OUTPUT / "double_click.txt").write_text(f"steps=1 refusal_shown={refused}\n")
    assert_healthy(browser, "after a double click")


def test_no_button_text_is_clipped_at_1000_px(browser, app_url):
    browser.set_window_size(1000, 2400)
    try:
        for number, link in enumerate(["Setup", *PAGES], start=1):
            if link == "Setup":
                browser.get(app_url)
            else:
                open_page(browser, link)
            wait_idle(browser)
            wait_for_charts(browser, 1, timeout=20)
            clipped = browser.execute_script("""
                return Array.from(document.querySelectorAll('button')).filter(b => b.offsetParent !== null)
                  .flatMap(b => [b, ...b.querySelectorAll('p, div, span')])
                  .filter(e => e.innerText && e.innerText.trim() && e.scrollWidth > e.clientWidth + 1)
                  .map(e => e.innerText.trim());""")
            assert not clipped, f"{link}: clipped button text at 1000 px: {clipped}"
            screenshot(browser, f"w1000_{number}_{link.split()[0].lower()}")
    finally:
        browser.set_window_size(1500, 2400)


def _legend_names(driver, title: str) -> list[str]:
    script = """
    const plots = document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot');
    for (const plot of plots) {
      const text = plot.layout && plot.layout.title && plot.layout.title.text;
      if (text && text.includes(arguments[0])) {  // (titles arrive wrapped in <b>)
        return plot.data.filter(t => t.showlegend !== false).map(t => t.name || t.legendgroup || '');
      }
    }
    return null;
    """
    start = time.perf_counter()
    names = driver.execute_script(script, title)
    turn = 0
    while names is None and time.perf_counter() - start < 90:  # charts below the fold are drawn when seen
        driver.execute_script("""const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]');
                                 if (charts.length) { charts[arguments[0] % charts.length].scrollIntoView(); }""",
                              turn)
        turn += 1
        time.sleep(1.0)
        names = driver.execute_script(script, title)
    assert names is not None, f"no chart titled {title!r}"
    return list(names)
