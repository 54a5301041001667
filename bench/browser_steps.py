"""Merge steps clicked in the real app in headless Chromium: seconds until each step is on screen,
and the server's own merge / scoring / analysis seconds per method (from the run it saved).

Starts `streamlit run app.py` from the repository root (so .streamlit/config.toml applies) on a
built zoo, opens the Merge page, clicks "Merge next task" `--steps` times and waits each time for
"Step k" on screen. `--gc` turns Streamlit's `gc.collect()` after every script run back on (the
config turns it off): the page polls a running step from a fragment, and those collections slowed
a default-zoo step 10-20x (docs/app.md). Prints the cores and the load average.

    NUFILT_CACHE_DIR=/work/zoo-cache python bench/browser_steps.py --steps 3
    NUFILT_CACHE_DIR=/work/zoo-cache python bench/browser_steps.py --steps 3 --gc
    python bench/browser_steps.py --quick      # the micro zoo (3 tasks), built in a temporary cache: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _browser import app_in_chromium, body_text, browser_missing, click, wait_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="merge steps to click (default 3)")
    parser.add_argument("--gc", action="store_true", help="Streamlit's post-run gc.collect() on (the config: off)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for one step (default 300)")
    parser.add_argument("--quick", action="store_true",
                        help="the micro zoo (3 tasks, NUFILT_ZOO_PRESET=micro) in a temporary cache")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    missing = browser_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2

    runs = Path(tempfile.mkdtemp(prefix="nufilt-browser-steps-"))  # this run's saved file only
    env = {**os.environ, "NUFILT_RUNS_DIR": str(runs), "NUFILT_APP_WORKERS": "0"}
    if args.quick:  # built on the first visit (the micro preset builds without a click)
        env.update(NUFILT_ZOO_PRESET="micro", NUFILT_CACHE_DIR=str(runs / "zoo"))
        args.steps = min(args.steps, 3)
    flags = [f"--runner.postScriptGC={'true' if args.gc else 'false'}"]
    load_before = os.getloadavg()
    shown: list[float] = []
    try:
        with app_in_chromium(env, flags) as (driver, url, _):
            driver.get(f"{url}/merge")
            wait_for(lambda: re.search(r"Step 0 / \d+", body_text(driver)), 600, "the Merge page (models loaded)")
            for step in range(1, args.steps + 1):
                click(driver, """return Array.from(document.querySelectorAll('button'))
                                   .find(b => b.innerText.trim() === 'Merge next task' && !b.disabled) || null;""",
                      "the Merge next task button")
                start = time.perf_counter()
                wait_for(lambda step=step: re.search(rf"Step {step} / \d+", body_text(driver)), args.timeout,
                         f"step {step}")
                shown.append(time.perf_counter() - start)
            saved = wait_for(lambda: list(runs.glob("run-*.pt")), 30, "the saved run")
            rows = json.loads(torch.load(saved[0], weights_only=True)["rows"])["metrics"]
    except TimeoutError as error:
        print(f"browser_steps: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"post-run gc {'on' if args.gc else 'off'}; {os.cpu_count()} cores; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'step':>4} {'on screen s':>11} | per method (server): merge / scoring / analysis s")
    for step, seconds in enumerate(shown, start=1):
        parts = [f"{row['method']} {row['merge_seconds']:.2f} / {row['eval_seconds']:.2f} / "
                 f"{row['analysis_seconds']:.2f}" for row in rows if row["step"] == step]
        print(f"{step:>4} {seconds:>11.1f} | " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
