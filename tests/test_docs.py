"""Executable docs: every command and code sample in README.md and docs/*.md runs as written.

Commands run in a scratch folder laid out as the docs assume (the repository's `docs/results/`,
the checkpoint folders a command names), with the `quick` embedded zoo (`NUFILT_ZOO_PRESET`: the
micro settings over all 20 tasks, so `--tasks 8/14/20` and the paper's orders work in seconds)
and, for the Hub backbones, an offline Hugging Face cache holding tiny models under the real repo
ids and layouts (`openai/clip-vit-base-patch32` as a CLIPModel with tokenizer and processor,
`tanganke/clip-vit-base-patch32_<task>` as CLIPVisionModels, `google/flan-t5-base`). Each
command's text is taken from the docs, so a changed or new command is run the next time.

A few lines cannot run inside a test; each is listed in NOT_RUN with the test that covers it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(python -m nufilt [^`]+)`")
CLIP_TASKS = ("sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd")
GLUE_TASKS = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb")

# commands that a test cannot run as written, and where they are covered instead
NOT_RUN = {
    "pip install -r requirements.txt": ".ci/run runs it in a fresh virtual environment",
    "pip install datasets": "an optional package; the docs' Hub commands use --data-dir",
    "python -m pytest": "this test suite itself",
    "streamlit run app.py": "tests/e2e/test_app_browser.py starts exactly this command",
    "bash bench/gpu_check.sh": "needs a CUDA device; the merge core it times runs on the CPU in tests/methods",
    "ray start --head --port 6379": "starts a Ray cluster; tests/test_grid.py runs the grid on a Ray session",
    "python -m nufilt run --tasks 20 --orders all --methods all,ablations --ray-address 127.0.0.1:6379 --out "
    "tiny-vit-20.json": "needs the cluster of the line above; tests/test_cli_errors.py checks --ray-address",
    "python -m nufilt analyze --tasks 8 --sweep r_p,r_l --workers 2 --out analysis.json":
        "minutes of analysis; tests/test_grid.py runs a sweep on 2 workers against the in-process sweep",
}
# benchmarks that take 3-12 minutes: their flags are checked against the script's --help here,
# their --quick variants run in tests/test_bench_scripts.py
# (docs/screenshots.py, bench/first_step.py and bench/browser_steps.py start the app and a browser for
# minutes; tests/e2e drives the same app)
LONG_SCRIPTS = (
    "bench/merge_speed.py", "bench/memory.py", "bench/zoo_build.py", "bench/grid_workers.py", "bench/zoo_study.py",
    "docs/screenshots.py", "bench/first_step.py", "bench/browser_steps.py",
)


def _code(path: Path) -> list[tuple[str, str]]:
    return [(lang or "text", body) for lang, body in FENCE.findall(path.read_text(encoding="utf-8"))]


def _command_lines(body: str) -> list[str]:
    """Shell lines of a block: continuations joined, comments and blank lines dropped, `&&` split."""
    joined = re.sub(r"\\\n\s*", " ", body)
    lines = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            lines.extend(part.strip() for part in shlex.join(words).split(" '&&' ") if part.strip())
    return lines


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for path in DOC_FILES:
        for lang, body in _code(path):
            if lang in ("bash", "sh", "shell"):
                found.extend((path.name, line) for line in _command_lines(body))
        text = FENCE.sub("", path.read_text(encoding="utf-8"))
        # inline commands; templates with <placeholders> or "..." are not commands
        found.extend((path.name, " ".join(match.split())) for match in INLINE.findall(text)
                     if "<" not in match and "..." not in match)
    return list(dict.fromkeys(found))


def documented_python() -> list[tuple[str, str]]:
    return [(path.name, body) for path in DOC_FILES for lang, body in _code(path) if lang == "python"]


# ---------------------------------------------------------------- the scratch folder


def _hub_repo(cache: Path, repo_id: str, source: Path) -> None:
    """`source`'s files as the Hub cache stores a snapshot of `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(source, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)


def _clip_sets(root: Path, tasks) -> None:
    from nufilt.backbones.clip import clip_task_specs
    from tests.backbones.builders import random_images, write_image_folder

    specs = clip_task_specs()
    for i, task in enumerate(tasks):
        classes = min(len(specs[task]["classes"]), 3)
        labels = [j % classes for j in range(6)]
        write_image_folder(root / task / "test", random_images(6, seed=10 + i), labels)


def _glue_sets(root: Path) -> None:
    from nufilt.backbones.t5 import glue_task_specs
    from tests.backbones.builders import write_jsonl

    words = ["the", "cat", "sat", "on", "a", "mat"]
    for task, spec in glue_task_specs().items():
        rows = []
        for j in range(4):
            row = {field: " ".join(words[(j + k) % 6] for k in range(4)) for field in spec["fields"]}
            row["label"] = float(j) if task == "stsb" else j % len(spec["targets"])
            rows.append(row)
        write_jsonl(root / task / "test.jsonl", rows)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """(cwd, env) for the documented commands."""
    from safetensors.torch import load_file, save_file

    from tests.backbones.builders import build_clip_hub, build_t5_hub

    root = tmp_path_factory.mktemp("docs")
    work, hub, build = root / "work", root / "hf-hub", root / "build"
    (work / "docs" / "results").mkdir(parents=True)
    clip = build_clip_hub(build / "clip", tasks=CLIP_TASKS)
    _hub_repo(hub, "openai/clip-vit-base-patch32", clip["pretrained"])
    for task in CLIP_TASKS:
        _hub_repo(hub, f"tanganke/clip-vit-base-patch32_{task}", clip[task])
    t5 = build_t5_hub(build / "t5", tasks=GLUE_TASKS)
    _hub_repo(hub, "google/flan-t5-base", t5["pretrained"])
    for task in GLUE_TASKS:
        _hub_repo(hub, f"tanganke/flan-t5-base_glue-{task}", t5[task])
    _clip_sets(work / "test-sets", CLIP_TASKS)
    _glue_sets(work / "glue-sets")
    # the merge example's folders: a pre-trained CLIPModel, CLIPVisionModel task folders, one file
    shutil.copytree(clip["pretrained"], work / "base")
    shutil.copytree(clip["stanford-cars"], work / "ft-cars")
    shutil.copytree(clip["dtd"], work / "ft-dtd")
    save_file(load_file(clip["eurosat"] / "model.safetensors"), str(work / "ft-eurosat.safetensors"))
    # local:models/my-clip
    local = work / "models" / "my-clip"
    shutil.copytree(clip["pretrained"], local / "pretrained")
    for task in ("mnist", "eurosat", "dtd"):
        shutil.copytree(clip[task], local / task)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NUFILT_ZOO_PRESET": "quick",
        "NUFILT_CACHE_DIR": str(root / "nufilt-cache"),
        "NUFILT_THREADS": "1",
        "HF_HUB_CACHE": str(hub),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    return work, env


def _run(argv: list[str], work: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- the tests

COMMANDS = documented_commands()


def test_the_docs_have_commands_and_samples():
    assert len(COMMANDS) >= 10 and len(documented_python()) >= 2
    assert any(line.startswith("python -m nufilt merge") for _, line in COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[line[:60] for _, line in COMMANDS])
def test_documented_command_runs_as_written(sandbox, doc, line, monkeypatch, capsys):
    work, env = sandbox
    if line in NOT_RUN:
        assert NOT_RUN[line]
        return
    words = shlex.split(line)
    if words[:2] == ["python", "-m"] or (words[0] == "python" and words[1].startswith(("bench/", "docs/"))):
        words[0] = sys.executable
    script = words[1] if len(words) > 1 else ""
    if script in LONG_SCRIPTS:
        help_text = _run([sys.executable, str(ROOT / script), "--help"], work, env).stdout
        flags = [word.strip("[]") for word in words[2:] if word.strip("[]").startswith("--")]
        assert all(flag in help_text for flag in flags), (line, help_text)
        return
    assert words[:3] == [sys.executable, "-m", "nufilt"], f"{doc}: no rule runs {line!r}; add one to tests/test_docs.py"
    # in this process (`python -m nufilt` only calls nufilt.cli.main): no torch import per command
    import huggingface_hub.constants

    from nufilt.cli import main

    monkeypatch.chdir(work)
    for key in ("NUFILT_ZOO_PRESET", "NUFILT_CACHE_DIR", "NUFILT_THREADS", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    try:
        code = main(words[3:])
    except SystemExit as exit_:  # --help
        code = exit_.code or 0
    err = capsys.readouterr().err
    assert code == 0, f"{doc}: {line}\n{err[-3000:]}"
    if "--out" in words:
        target = work / words[words.index("--out") + 1]
        assert target.exists(), target
        if target.suffix == ".json":
            assert json.loads(target.read_text())
    if "--save" in words:
        assert (work / words[words.index("--save") + 1] / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(("doc", "sample"), documented_python(), ids=lambda v: str(v)[:40].replace("\n", " "))
def test_documented_python_runs_as_written(sandbox, doc, sample, tmp_path):
    work, env = sandbox
    for result in (ROOT / "docs" / "results").glob("*.json"):  # samples that read the published results
        if not (work / "docs" / "results" / result.name).exists():  # (a documented command's own output wins)
            shutil.copy(result, work / "docs" / "results" / result.name)
    script = tmp_path / "sample.py"
    script.write_text(sample)
    done = _run([sys.executable, str(script)], work, env)
    assert done.returncode == 0, f"{doc}:\n{sample}\n{done.stderr[-3000:]}"


def test_the_merge_example_output_loads_as_the_readme_says(sandbox):
    """README: "then CLIPVisionModel.from_pretrained("merged/")" (and the pre-trained class)."""
    from transformers import CLIPModel, CLIPVisionModel

    from nufilt.backbones.hub import quiet_transformers

    work, env = sandbox
    line = next(line for _, line in COMMANDS if line.startswith("python -m nufilt merge"))
    words = shlex.split(line)
    out = work / "merged-check"
    words[words.index("--out") + 1] = str(out)
    words[0] = sys.executable
    done = _run(words, work, env)
    assert done.returncode == 0, done.stderr
    with quiet_transformers():
        vision = CLIPVisionModel.from_pretrained(out)
        CLIPModel.from_pretrained(out)
    assert all(torch.isfinite(v).all() for v in vision.state_dict().values())
