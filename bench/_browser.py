"""What the browser benchmarks share: `streamlit run app.py` from the repository root (so
.streamlit/config.toml applies) on a free port, Debian's headless Chromium driven by selenium,
and small waits. Not a script (hence the underscore): `bench/first_step.py` and
`bench/browser_steps.py` import it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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


def browser_missing() -> str | None:
    """Why the benchmark cannot drive a browser here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements.txt)"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if not chromium or not os.path.isfile(driver_path):
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    return None


@contextmanager
def app_in_chromium(env: Mapping[str, str], flags: Sequence[str] = (), page_timeout: float = 600
                    ) -> Iterator[tuple[object, str, float]]:
    """(driver, url, start) once the server answers: `start` is the `perf_counter()` of the
    server's start. Stops the server (its process group) and Chromium afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true", f"--server.port={port}",
         "--server.address=127.0.0.1", "--browser.gatherUsageStats=false", *flags],
        cwd=ROOT, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="nufilt-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = None
    try:
        driver_path = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        driver.set_page_load_timeout(page_timeout)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    return response.read().strip() == b"ok"
            except OSError:
                return False

        wait_for(healthy, 60, "the server")
        yield driver, url, start
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)
