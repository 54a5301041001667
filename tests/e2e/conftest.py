"""The real app in a real browser: `streamlit run app.py` on a free port + headless Chromium (selenium).

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the tests
skip, unless `NUFILT_REQUIRE_E2E=1` (set in CI), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "e2e"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1500,2400",
)


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isfile(name) else None)
        if found:
            return found
    return None


def _missing(reason: str) -> None:
    if os.environ.get("NUFILT_REQUIRE_E2E") == "1":
        pytest.fail(f"end-to-end browser test required (NUFILT_REQUIRE_E2E=1) but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(micro_zoo_dir, tmp_path_factory):
    """A headless `streamlit run app.py` on the micro zoo; yields its URL, stops it afterwards."""
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = {**os.environ, "NUFILT_ZOO_PRESET": "micro", "NUFILT_CACHE_DIR": str(micro_zoo_dir),
           "NUFILT_RUNS_DIR": str(tmp_path_factory.mktemp("runs")),  # this server's saved runs only
           "NUFILT_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
               f"--server.port={port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false",
               "--server.fileWatcherType=none", "--server.runOnSave=false"]
    with log.open("w") as stream:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.perf_counter() - start > 60:
                pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        (OUTPUT / "server_start_seconds.txt").write_text(f"{time.perf_counter() - start:.2f}\n")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the group this fixture started
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        (OUTPUT / "server.log").write_text(log.read_text())


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium driven by selenium (Debian's chromium + chromium-driver; nothing downloaded)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -r requirements.txt)")
    # NUFILT_CHROMIUM / NUFILT_CHROMEDRIVER point at other binaries (a path that is not a file = missing)
    binary = _find(os.environ["NUFILT_CHROMIUM"]) if "NUFILT_CHROMIUM" in os.environ else _find(
        "chromium", "chromium-browser", "/usr/bin/chromium")
    driver_path = _find(os.environ["NUFILT_CHROMEDRIVER"]) if "NUFILT_CHROMEDRIVER" in os.environ else _find(
        "chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
    if not binary or not driver_path:
        _missing("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
