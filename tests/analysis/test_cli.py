"""`python -m nufilt analyze` on the micro zoo."""

import json
import shutil

from nufilt.cli import main


def test_analyze_writes_the_json_document(micro_zoo_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(micro_zoo_dir, cache)  # activation entries go beside the zoo: keep the shared one clean
    out = tmp_path / "analysis.json"
    argv = ["analyze", "--preset", "micro", "--tasks", "3", "--samples", "16", "--r-d", "2", "--r-v", "4",
            "--methods", "task_arithmetic,null_space_only", "--cache-dir", str(cache), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    document = json.loads(out.read_text())
    assert document["settings"]["methods"] == ["task_arithmetic", "null_space_only"]
    assert document["settings"]["r_d"] == 2 and document["settings"]["n_samples"] == 16
    printed = capsys.readouterr().out
    assert "null_space_only" in printed and "Corollary 1" in printed and "diagonal" in printed


def test_analyze_rejects_bad_arguments(tmp_path, capsys):
    assert main(["analyze", "--preset", "micro", "--tasks", "3", "--sweep", "r_x", "--quiet"]) == 2
    assert "--sweep" in capsys.readouterr().err


def test_default_samples_never_exceed_the_zoos_test_images(micro_zoo, micro_zoo_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(micro_zoo_dir, cache)
    out = tmp_path / "analysis.json"
    argv = ["analyze", "--preset", "micro", "--tasks", "3", "--r-d", "2", "--r-v", "4",
            "--methods", "task_arithmetic", "--cache-dir", str(cache), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    n_test = micro_zoo.config.n_test
    assert n_test < 256  # the micro zoo has fewer test images than the default asks for
    assert json.loads(out.read_text())["settings"]["n_samples"] == n_test
