"""`python -m nufilt run`: JSON schema, table, option pass-through, and one-line usage errors."""

import json
import subprocess
import sys

import pytest

from nufilt.cli import build_parser, main, parse_options, parse_value

MICRO_ORDER = "bar-position,blob-quadrant,ring-count"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def micro_args(cache_dir, *extra):
    return ["run", "--preset", "micro", "--tasks", "3", "--cache-dir", str(cache_dir), "--quiet", *extra]


def test_run_writes_the_documented_json_schema(micro_zoo, micro_zoo_dir, tmp_path, capsys):
    out_path = tmp_path / "results.json"
    code, out, err = run_cli(
        capsys,
        *micro_args(micro_zoo_dir, "--order", MICRO_ORDER, "--order", "ring-count,bar-position,blob-quadrant"),
        "--methods",
        "weight_average,nufilt,naive",
        "--option",
        "nufilt.steps=5",
        "--out",
        str(out_path),
    )
    assert code == 0, err
    result = json.loads(out_path.read_text())
    assert set(result) == {"backbone", "tasks", "runs", "summary", "reference"}
    assert result["backbone"] == "tiny-vit"
    assert result["tasks"] == MICRO_ORDER.split(",")
    assert len(result["runs"]) == 6
    for run in result["runs"]:
        assert {"method", "order", "acc", "bwt", "accuracy_matrix", "seconds"} <= set(run)
        assert [len(row) for row in run["accuracy_matrix"]] == [1, 2, 3]
        assert all(0 <= a <= 100 for row in run["accuracy_matrix"] for a in row)
    assert [run["options"]["steps"] for run in result["runs"] if run["method"] != "weight_average"] == [5] * 4
    recommended = micro_zoo.recommended_options["nufilt"]  # zoo-scaled ranks, not the paper's 128/64
    assert {run["options"]["r_p"] for run in result["runs"] if run["method"] == "nufilt"} == {recommended["r_p"]}
    assert {run["options"]["r_l"] for run in result["runs"] if run["method"] == "naive"} == {0}
    assert set(result["summary"]) == {"weight_average", "nufilt", "naive"}
    for summary in result["summary"].values():
        assert {"acc_mean", "acc_std", "bwt_mean", "bwt_std"} <= set(summary)
    assert set(result["reference"]) == {"pretrained", "individual"}
    assert set(result["reference"]["individual"]) == set(result["tasks"])
    for row in ("pretrained", "individual", "weight_average", "nufilt", "naive"):
        assert row in out
    assert f"{result['summary']['nufilt']['acc_mean']:.1f}" in out


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--methods", "weight_average,fisher"], "unknown method 'fisher'"),
        (["--methods", ","], "--methods is empty"),
        (["--option", "nufilt.r_p"], "METHOD.KEY=VALUE"),
        (["--option", "opcm.alpha=0.4"], "not in --methods"),
        (["--option", "weight_average.rank=3"], "unknown option 'rank'"),
        (["--order", "bar-position,bar-position,ring-count"], "more than once"),
        (["--order", "bar-position,ring-count"], "expected 3"),
        (["--order", "bar-position,ring-count,sun397"], "unknown task"),
        (["--orders", "7"], "order index must be in 1..6 (6 seeded orders of 3 tasks)"),  # 3! = 6
        (["--tasks", "0"], "--tasks must be positive"),
        (["--tasks", "5"], "n_tasks must be an integer in 1..3"),
        (["--preset", "huge"], "unknown zoo preset"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(micro_zoo_dir, capsys, extra, reason):
    argv = micro_args(micro_zoo_dir, "--methods", "weight_average", *extra)
    if "--order" not in extra and "--orders" not in extra:
        argv += ["--order", MICRO_ORDER]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert reason in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("nufilt run: error:")


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--tasks", "eight"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "--tasks" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2


def test_help_documents_every_option():
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    text = run_parser.format_help()
    for action in run_parser._actions:
        for flag in action.option_strings:
            assert flag in text
    for word in ("weight_average", "null_space_only", "nufilt.r_p=32", "Table 9"):
        assert word in text


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "nufilt", "run", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--option" in result.stdout


def test_option_values_are_typed():
    assert parse_value("32") == 32 and parse_value("0.5") == 0.5
    assert parse_value("false") is False and parse_value("none") is None
    assert parse_value("keep-pretrained") == "keep-pretrained"
    assert parse_options(["nufilt.r_p=8", "nufilt.null_space=false"]) == {"nufilt": {"r_p": 8, "null_space": False}}
