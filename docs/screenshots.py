"""Regenerate docs/images/merge.png and docs/images/geometry.png from the running app.

    NUFILT_CACHE_DIR=/work/zoo-cache python docs/screenshots.py [--steps 3] [--out docs/images]

Starts `streamlit run app.py` headless on a free port (the default embedded zoo, from
NUFILT_CACHE_DIR or ./cache; built first if it is missing, which takes minutes), opens it in
Debian's headless Chromium with selenium (`/usr/bin/chromium`, `/usr/bin/chromedriver`; set
NUFILT_CHROMIUM / NUFILT_CHROMEDRIVER for others), clicks "Merge next task" a few times on the
Merge page and saves a 1600 px wide PNG of the Merge page and of the Geometry page
(`--width 1000 --out /tmp/shots` for a look at a narrow window without touching docs/images).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 1600
MAX_HEIGHT = 2400


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_app(port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
               f"--server.port={port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false",
               "--server.fileWatcherType=none", "--server.runOnSave=false"]
    with log.open("w") as stream:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    start = time.perf_counter()
    while time.perf_counter() - start < 120:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return server
        except OSError:
            pass
        if server.poll() is not None:
            break
        time.sleep(0.3)
    _stop(server)
    raise SystemExit(f"streamlit did not start:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # the process group this script started
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _browser(profile: Path, width: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = os.environ.get("NUFILT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = os.environ.get("NUFILT_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-dev-shm-usage", f"--window-size={width},1200",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(120)
    return driver


def _css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _wait_idle(driver, timeout: float = 600.0) -> None:
    """Until the app's script run is over and stays over for a second."""
    start, quiet_since = time.perf_counter(), None
    while time.perf_counter() - start < timeout:
        apps = _css(driver, '[data-testid="stApp"]')
        if apps and apps[0].get_attribute("data-test-script-state") == "notRunning":
            quiet_since = quiet_since or time.perf_counter()
            if time.perf_counter() - quiet_since > 1.0:
                return
        else:
            quiet_since = None
        time.sleep(0.2)
    raise SystemExit(f"the app was still running after {timeout} s")


def _wait_charts(driver, minimum: int, timeout: float = 60.0) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        charts = _css(driver, '[data-testid="stPlotlyChart"] .main-svg')
        if len(charts) >= minimum:
            break
        time.sleep(0.3)
    time.sleep(1.5)  # Plotly's transitions


def _open(driver, title: str) -> None:
    links = [a for a in _css(driver, '[data-testid="stSidebarNavLink"]') if a.text.strip().endswith(title)]
    if not links:
        raise SystemExit(f"no sidebar link {title!r}")
    links[0].click()
    time.sleep(0.5)
    _wait_idle(driver)


def _click(driver, text: str) -> None:
    buttons = [b for b in _css(driver, "button") if text in b.text]
    if not buttons:
        raise SystemExit(f"no button {text!r} on the page")
    buttons[0].click()
    time.sleep(0.5)
    _wait_idle(driver)


STEP = """const match = document.body.innerText.match(/Step (\\d+) \\/ \\d+/);
const stop = Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Stop');
return [match ? parseInt(match[1]) : null, stop ? !stop.disabled : false];"""


def _merge_step(driver, timeout: float = 300.0) -> None:
    """Click "Merge next task" and wait until the page shows the next step with no job running.
    (The step runs in the background and the page polls it every second, so the page is idle
    between polls while the step still runs: waiting for an idle page alone lost clicks.)"""
    before, _ = driver.execute_script(STEP)
    _click(driver, "Merge next task")
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        step, running = driver.execute_script(STEP)
        if step is not None and before is not None and step > before and not running:
            _wait_idle(driver)
            return
        time.sleep(0.3)
    raise SystemExit(f"the merge step after step {before} did not finish within {timeout} s")


def _shoot(driver, path: Path, width: int) -> None:
    """The page's content, `width` px wide and as tall as it is (at most MAX_HEIGHT)."""
    height = driver.execute_script("""
        const main = document.querySelector('[data-testid="stMainBlockContainer"]')
                  || document.querySelector('[data-testid="stMain"]') || document.body;
        return Math.ceil(main.scrollHeight + main.getBoundingClientRect().top) + 160;""")
    driver.set_window_size(width, min(max(int(height), 900), MAX_HEIGHT))
    time.sleep(2.0)  # charts re-layout to the new size
    driver.save_screenshot(str(path))
    driver.set_window_size(width, 1200)
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size // 1024} KiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="merge steps before the screenshots (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNGs")
    parser.add_argument("--width", type=int, default=WIDTH, help=f"window width in px (default {WIDTH}, the README's)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.width < 600:
        parser.error("--width must be at least 600")
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.out / ".screenshots-tmp"
    scratch.mkdir(exist_ok=True)
    server = _start_app(_free_port(), scratch / "server.log")
    port = int(server.args[[i for i, a in enumerate(server.args) if a.startswith("--server.port=")][0]].split("=")[1])
    driver = None
    try:
        driver = _browser(scratch / "profile", args.width)
        driver.get(f"http://127.0.0.1:{port}")
        _wait_idle(driver)
        _open(driver, "Merge")
        _wait_charts(driver, 5)
        if "Step 0 /" not in driver.execute_script("return document.body.innerText"):
            _click(driver, "Reset")  # a saved run of this configuration: start it again
        for _ in range(args.steps):
            _merge_step(driver)
        _wait_charts(driver, 5)
        _shoot(driver, args.out / "merge.png", args.width)
        _open(driver, "Geometry")
        _wait_charts(driver, 2)
        _shoot(driver, args.out / "geometry.png", args.width)
    finally:
        if driver is not None:
            driver.quit()
        _stop(server)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
