"""The paper's numbers beside a run's own, and the peak-memory report."""

from __future__ import annotations

from pathlib import Path

import pytest

from nufilt.memory import memory_report, peak_rss_mb
from nufilt.paper import comparison_table, gap_share, paper_reference, recovered_shares


def test_clip_column_rows():
    rows = {row["method"]: row for row in paper_reference("clip-vit-b32", 8)}
    assert rows["NUFILT (Ours)"]["acc"] == 83.6 and rows["NUFILT (Ours)"]["acc_std"] == 0.2
    assert rows["NUFILT (Ours)"]["label"] == "nufilt" and rows["OPCM"]["bwt"] == -6.3
    assert rows["Pre-Trained"]["reference"] and rows["Pre-Trained"]["acc"] == 48.1
    # the data-free rows added later join on their registry names (Table 1, ViT-B/32, 8 tasks)
    assert (rows["Iso-C"]["label"], rows["Iso-C"]["acc"], rows["Iso-C"]["bwt"]) == ("iso_c", 71.7, -10.2)
    assert (rows["KnOTS-TIES"]["label"], rows["KnOTS-TIES"]["acc_std"]) == ("knots_ties", 6.9)
    assert (rows["TSV-M"]["label"], rows["TSV-M"]["bwt"], rows["TSV-M"]["bwt_std"]) == ("tsv_m", -24.0, 5.6)
    assert rows["LW AdaMerging"]["label"] is None  # uses data: not a method here
    assert paper_reference("clip-vit-l14", 20)[0]["acc"] == 65.6
    assert paper_reference("local:/x", 14, column="ViT-B/16")[0]["acc"] == 62.0


def test_flan_t5_rows_and_unknown_settings():
    rows = {row["method"]: row for row in paper_reference("flan-t5-base", 8)}
    assert rows["NUFILT (Ours)"]["acc"] == 83.7 and rows["NUFILT (Ours)"]["bwt"] == -1.5
    assert rows["Individual"]["reference"] and rows["Individual"]["acc"] == 86.4
    assert paper_reference("flan-t5-base", 4) == []
    assert paper_reference("tiny-vit", 8) == [] and paper_reference("clip-vit-b32", 5) == []


def test_comparison_table_puts_run_numbers_beside_the_paper():
    summary = {"nufilt": {"acc_mean": 80.04, "acc_std": 0.5, "bwt_mean": -2.0, "bwt_std": 0.1}}
    table = comparison_table(summary, paper_reference("clip-vit-b32", 8))
    nufilt_line = next(line for line in table.splitlines() if line.startswith("NUFILT"))
    assert "83.6 ± 0.2" in nufilt_line and "80.0 ± 0.5" in nufilt_line and "-2.0 ± 0.1" in nufilt_line
    opcm_line = next(line for line in table.splitlines() if line.startswith("OPCM"))
    assert opcm_line.split()[-1] == "-"  # not run
    assert comparison_table(summary, []) == ""


def test_peak_memory_is_at_least_the_current_resident_size():
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("needs Linux /proc")
    block = bytearray(64 * 2**20)  # touched pages count towards the resident size
    block[::4096] = b"x" * len(block[::4096])
    current_kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS"))
    assert peak_rss_mb() >= current_kib / 1024 >= 64
    assert memory_report().startswith("peak memory:") and "MiB RSS" in memory_report()


def test_gap_share_is_the_closed_part_of_the_pretrained_to_individual_gap():
    assert gap_share(70.0, 50.0, 90.0) == pytest.approx(50.0)
    assert gap_share(45.0, 50.0, 90.0) == pytest.approx(-12.5)  # below pre-trained: negative
    assert gap_share(83.6, 48.1, 90.4) == pytest.approx(83.9, abs=0.05)  # the paper's ViT-B/32, 8 tasks
    assert gap_share(None, 50.0, 90.0) is None and gap_share(70.0, 80.0, 80.0) is None


def _result(summary_acc: dict, pretrained: dict, individual: dict) -> dict:
    return {"tasks": list(pretrained), "reference": {"pretrained": pretrained, "individual": individual},
            "summary": {label: {"acc_mean": acc} for label, acc in summary_acc.items()}}


def test_recovered_shares_set_a_run_beside_the_papers_column():
    tasks = [f"t{i}" for i in range(8)]
    result = _result({"nufilt": 70.0, "task_arithmetic": 60.0, "no_filter": 71.0},
                     dict.fromkeys(tasks, 50.0) | {"t0": 42.0}, dict.fromkeys(tasks, 90.0))
    rows = {row["label"]: row for row in recovered_shares(result)}
    assert list(rows) == ["nufilt", "task_arithmetic", "no_filter"]  # the run's methods, in its order
    # the run's own gap: pre-trained 49.0 (one task at 42), individual 90.0
    assert rows["nufilt"]["share"] == pytest.approx(100 * 21 / 41)
    assert rows["task_arithmetic"]["share"] == pytest.approx(100 * 11 / 41)
    # the paper's ViT-B/32 column for 8 tasks: pre-trained 48.1, individual 90.4
    assert rows["nufilt"]["paper_acc"] == 83.6
    assert rows["nufilt"]["paper_share"] == pytest.approx(100 * (83.6 - 48.1) / (90.4 - 48.1))
    assert rows["task_arithmetic"]["paper_share"] == pytest.approx(100 * (67.5 - 48.1) / (90.4 - 48.1))
    assert rows["no_filter"]["paper_acc"] is None and rows["no_filter"]["paper_share"] is None  # not in Table 1
    # another column and task count: ViT-L/14 at 20 tasks (pre-trained 65.6, individual 93.5)
    other = {row["label"]: row for row in recovered_shares(result, "clip-vit-l14", 20)}
    assert other["nufilt"]["paper_share"] == pytest.approx(100 * (other["nufilt"]["paper_acc"] - 65.6) / (93.5 - 65.6))
    assert other["nufilt"]["share"] == rows["nufilt"]["share"]
    # a task count the paper has no column for: the run's shares, no paper numbers
    assert all(row["paper_share"] is None for row in recovered_shares(result, "clip-vit-b32", 5))


def test_recovered_shares_default_to_the_column_the_compare_page_uses():
    tasks = [f"t{i}" for i in range(8)]
    result = _result({"nufilt": 70.0}, dict.fromkeys(tasks, 50.0), dict.fromkeys(tasks, 90.0))
    # a Flan-T5 run against Table 2 (pre-trained / individual spelled "Pre-trained" / "Individual")
    t5 = {row["method"]: row["acc"] for row in paper_reference("flan-t5-base", 8)}
    (row,) = recovered_shares(result | {"backbone": "flan-t5-base"})
    assert row["paper_acc"] == t5["NUFILT (Ours)"]
    assert row["paper_share"] == pytest.approx(
        100 * (t5["NUFILT (Ours)"] - t5["Pre-trained"]) / (t5["Individual"] - t5["Pre-trained"]))
    # a CLIP run against its own column: ViT-L/14 at 8 tasks (pre-trained 64.9, individual 94.3)
    (row,) = recovered_shares(result | {"backbone": "clip-vit-l14"})
    assert row["paper_share"] == pytest.approx(100 * (row["paper_acc"] - 64.9) / (94.3 - 64.9))
    # the embedded zoo with 5 tasks: Table 1's ViT-B/32 column at 8 tasks, as on the Compare page
    five = _result({"nufilt": 70.0}, dict.fromkeys(tasks[:5], 50.0), dict.fromkeys(tasks[:5], 90.0))
    (row,) = recovered_shares(five | {"backbone": "tiny-vit"})
    assert (row["paper_acc"], row["share"]) == (83.6, pytest.approx(50.0))


def test_recovered_shares_name_what_is_wrong_with_the_input():
    with pytest.raises(TypeError, match="run's JSON"):
        recovered_shares("docs/results/tiny-vit-8.json")
    with pytest.raises(ValueError, match="lacks reference"):
        recovered_shares({"tasks": ["a"], "summary": {}})
    with pytest.raises(ValueError, match="pre-trained and individual"):
        recovered_shares({"tasks": ["a"], "summary": {}, "reference": {"pretrained": {"a": 50.0}}})
    with pytest.raises(ValueError, match="lack task"):
        recovered_shares(_result({"nufilt": 60.0}, {"a": 50.0}, {"b": 90.0}))
    with pytest.raises(ValueError, match="no acc_mean for nufilt"):
        recovered_shares(_result({}, {"a": 50.0}, {"a": 90.0}) | {"summary": {"nufilt": {"acc": 60.0}}})
