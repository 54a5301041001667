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
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--window-size=1500,2000")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def body_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''") or ""


def click(driver, script: str, what: str) -> None:
    """Click the first element `script` (JavaScript returning an element or null) finds."""
    element = wait_for(lambda: driver.execute_script(script), 120, what)
    element.click()  # a real click: the Quick demo switch (react-aria) ignores a scripted element.click()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the micro zoo (3 tasks) through NUFILT_ZOO_PRESET=micro instead of Quick demo")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds (default 600)")
    args = parser.parse_args()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        print("selenium is not installed (pip install -r requirements.txt)", file=sys.stderr)
        return 2
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if not chromium or not os.path.isfile(driver_path):
        print("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2

    cache = Path(tempfile.mkdtemp(prefix="nufilt-first-step-"))  # an empty cache: everything is built
    env = {key: value for key, value in os.environ.items() if key not in ("NUFILT_ZOO_PRESET", "NUFILT_RUNS_DIR")}
    env.update(NUFILT_CACHE_DIR=str(cache), **({"NUFILT_ZOO_PRESET": "micro"} if args.quick else {}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true", f"--server.port={port}",
         "--server.address=127.0.0.1", "--browser.gatherUsageStats=false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="nufilt-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = None
    try:
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        driver.set_page_load_timeout(args.timeout)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    return response.read().strip() == b"ok"
            except OSError:
                return False

        wait_for(healthy, 60, "the server")
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
              if (!(p.layout && p.layout.title && String(p.layout.title.text).includes('Accuracy matrix'))) continue;
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
        if driver is not None:
            driver.quit()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(profile, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"zoo: {'micro (NUFILT_ZOO_PRESET)' if args.quick else 'quick (Quick demo control)'}; "
          f"{os.cpu_count()} cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'milestone':<28}{'seconds':>9}")
    for name, seconds in marks:
        print(f"{name:<28}{seconds:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
