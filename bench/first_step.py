"""Seconds from `streamlit run app.py` on an empty cache to the first merge step on screen.

Drives the real app in headless Chromium (Debian's chromium + chromium-driver, selenium) as a new
user would: open the app, turn on **Quick demo** on the Setup page (the quick-start zoo is built
in the background), open the Merge page, click "Merge next task", and wait until "Step 1" and the
redrawn accuracy matrix are on screen. Prints the time of each milestone since the server start,
the machine's cores and its load average (other work slows every number here).

    python bench/first_step.py                 # the quick-start zoo via the Quick demo control
    python bench/first_step.py --quick         # the micro zoo (3 tasks, NUFILT_ZOO_PRESET=micro): a smoke run
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _browser import app_in_chromium, body_text, browser_missing, click, wait_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the micro zoo (3 tasks) through NUFILT_ZOO_PRESET=micro instead of Quick demo")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds (default 600)")
    args = parser.parse_args()
    missing = browser_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2

    cache = Path(tempfile.mkdtemp(prefix="nufilt-first-step-"))  # an empty cache: everything is built
    env = {key: value for key, value in os.environ.items() if key not in ("NUFILT_ZOO_PRESET", "NUFILT_RUNS_DIR")}
    env.update(NUFILT_CACHE_DIR=str(cache), **({"NUFILT_ZOO_PRESET": "micro"} if args.quick else {}))
    load_before = os.getloadavg()
    marks: list[tuple[str, float]] = []
    try:
        with app_in_chromium(env, page_timeout=args.timeout) as (driver, url, start):
            marks.append(("server answers", time.perf_counter() - start))
            driver.get(url)
            wait_for(lambda: "Setup" in body_text(driver) and "Backbone" in body_text(driver), 120, "the Setup page")
            marks.append(("Setup page on screen", time.perf_counter() - start))
            if not args.quick:
                click(driver, """return Array.from(document.querySelectorAll('label'))
                                   .find(l => l.innerText.trim().startsWith('Quick demo')) || null;""",
                      "the Quick demo control")
                marks.append(("Quick demo turned on", time.perf_counter() - start))
            wait_for(lambda: "task models ready" in body_text(driver), args.timeout, "the zoo build")
            marks.append(("models ready", time.perf_counter() - start))
            click(driver, """return Array.from(document.querySelectorAll('[data-testid="stSidebarNavLink"]'))
                               .find(a => a.innerText.trim().endsWith('Merge')) || null;""", "the Merge link")
            wait_for(lambda: re.search(r"Step 0 / \d+", body_text(driver)), 120, "the Merge page")
            marks.append(("Merge page on screen", time.perf_counter() - start))
            click(driver, """return Array.from(document.querySelectorAll('button'))
                               .find(b => b.innerText.trim() === 'Merge next task' && !b.disabled) || null;""",
                  "the Merge next task button")
            wait_for(lambda: re.search(r"Step 1 / \d+", body_text(driver)), args.timeout, "the first merge step")
            wait_for(lambda: driver.execute_script(r"""
                for (const p of document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')) {
                  const title = p.layout && p.layout.title && String(p.layout.title.text);
                  if (!(title && title.includes('Accuracy matrix'))) continue;
                  for (const t of p.data) {  // z: NumPy-encoded, decoded by Plotly into `_inputArray` rows
                    const z = t.z && t.z._inputArray ? t.z._inputArray : (t.z || []);
                    const rows = Array.isArray(z) ? z : Object.keys(z).filter(k => /^\d+$/.test(k)).map(k => z[k]);
                    if (rows.some(row => Array.from(row || []).some(v => v !== null && !Number.isNaN(v)))) return true;
                  }
                }
                return false;"""), 60, "the accuracy matrix of step 1")
            marks.append(("first merge step on screen", time.perf_counter() - start))
    except TimeoutError as error:
        print(f"first_step: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"zoo: {'micro (NUFILT_ZOO_PRESET)' if args.quick else 'quick (Quick demo control)'}; "
          f"{os.cpu_count()} cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'milestone':<28}{'seconds':>9}")
    for name, seconds in marks:
        print(f"{name:<28}{seconds:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
