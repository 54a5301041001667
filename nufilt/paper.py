"""The paper's published numbers (Table 1: CLIP, Table 2: Flan-T5) beside a run's own.

`paper_reference(backbone, n_tasks)` returns the rows of the matching table column (ACC and BWT,
mean and std over the paper's ten task orders); `comparison_table(summary, reference)` puts
them next to the summary of `python -m nufilt run`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from importlib import resources

# paper row name -> method label of this project (registry names and Table 4 ablations)
PAPER_METHODS = {
    "Weight Averaging": "weight_average",
    "Task Arithmetic": "task_arithmetic",
    "Ties-Merging": "ties",
    "MagMax-Ind": "magmax",
    "WUDI-Merging": "wudi",
    "Iso-C": "iso_c",
    "KnOTS-TIES": "knots_ties",
    "TSV-M": "tsv_m",
    "OPCM": "opcm",
    "NUFILT (Ours)": "nufilt",
}
CLIP_COLUMNS = {"clip-vit-b32": "ViT-B/32", "clip-vit-b16": "ViT-B/16", "clip-vit-l14": "ViT-L/14"}
T5_BACKBONES = ("flan-t5-base",)
PAPER_GROUPS = (8, 14, 20)  # the task counts of Table 1's columns and of the paper's task orders


def reference_column(backbone: str, n_tasks: int) -> tuple[str, int]:
    """The paper column a run is compared against: its own for CLIP/T5, Table 1's ViT-B/32 for
    any other backbone (the embedded zoo, local folders), at 8 tasks when the paper has no column
    for `n_tasks`."""
    if backbone in CLIP_COLUMNS or backbone in T5_BACKBONES:
        return backbone, n_tasks
    return "clip-vit-b32", n_tasks if n_tasks in PAPER_GROUPS else 8


@functools.cache
def _table(name: str) -> dict:
    return json.loads(resources.files("nufilt.data").joinpath(name).read_text(encoding="utf-8"))


def _row(method: str, acc=None, acc_std=None, bwt=None, bwt_std=None, reference=False) -> dict:
    return {
        "method": method,
        "label": PAPER_METHODS.get(method),
        "acc": acc,
        "acc_std": acc_std,
        "bwt": bwt,
        "bwt_std": bwt_std,
        "reference": reference,
    }


def paper_column(backbone: str, paper_column: str | None = None) -> str | None:
    """'ViT-B/32' for `clip-vit-b32` (or the backbone's own `paper_column`), else None."""
    return paper_column or CLIP_COLUMNS.get(backbone)


def paper_reference(backbone: str, n_tasks: int, column: str | None = None) -> list[dict]:
    """Rows of the paper's table for this backbone and task count; [] when the paper has none.

    Each row: method (paper name), label (this project's method label or None), acc, acc_std,
    bwt, bwt_std (percent; None where the paper gives none), reference (pre-trained/individual).
    """
    if backbone in T5_BACKBONES or (column is None and backbone.startswith("flan-t5")):
        if n_tasks != 8:
            return []
        rows = _table("table2_flan_t5.json")["rows"]
        return [
            _row(name, row.get("ACC"), None, row.get("BWT"), reference=row.get("BWT") is None)
            for name, row in rows.items()
        ]
    prefix = paper_column(backbone, column)
    if prefix is None:
        return []
    table = _table("table1_clip.json")
    key = f"{prefix}/{n_tasks}"
    if key not in table["columns"]:
        return []
    out = [_row(name, values.get(key), reference=True) for name, values in table["reference_rows"].items()]
    for name, values in table["acc"].items():
        acc = values.get(key) or {}
        bwt = table["bwt"].get(name, {}).get(key) or {}
        out.append(_row(name, acc.get("mean"), acc.get("std"), bwt.get("mean"), bwt.get("std")))
    return out


def _cell(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def comparison_table(summary: Mapping[str, Mapping[str, float]], reference: Sequence[Mapping]) -> str:
    """Plain-text table: every paper row, with this run's ACC/BWT beside the matching method."""
    if not reference:
        return ""
    lines = [f"{'paper row':<18} {'paper ACC':>13} {'run ACC':>13} {'paper BWT':>13} {'run BWT':>13}"]
    for row in reference:
        mine = summary.get(row["label"] or "", {})
        lines.append(
            f"{row['method']:<18} {_cell(row['acc'], row['acc_std']):>13} "
            f"{_cell(mine.get('acc_mean'), mine.get('acc_std')):>13} "
            f"{_cell(row['bwt'], row['bwt_std']):>13} {_cell(mine.get('bwt_mean'), mine.get('bwt_std')):>13}"
        )
    return "\n".join(lines)


def gap_share(acc: float | None, pretrained: float | None, individual: float | None) -> float | None:
    """Percent of the gap from pre-trained to individual accuracy that `acc` closes:
    100 (acc − pretrained) / (individual − pretrained). A scale-free way to set a small backbone's
    ACC beside the paper's. None when a number is missing or the gap is not positive."""
    if acc is None or pretrained is None or individual is None:
        return None
    gap = individual - pretrained
    return 100.0 * (acc - pretrained) / gap if gap > 0 else None


def paper_gap(paper_rows: Sequence[Mapping]) -> dict[str, float]:
    """The pre-trained and individual accuracy of a `paper_reference` column ({"pretrained": ...,
    "individual": ...}; a row the table lacks is left out). Table 1 spells "Pre-Trained", Table 2
    "Pre-trained"."""
    names = {"pre-trained": "pretrained", "individual": "individual"}
    return {names[row["method"].lower()]: row["acc"] for row in paper_rows
            if row["reference"] and row["method"].lower() in names and row["acc"] is not None}


def recovered_shares(result: Mapping, backbone: str | None = None, n_tasks: int | None = None) -> list[dict]:
    """The share of the pre-trained → individual gap each method of a `python -m nufilt run` result
    recovers, beside the same share in the paper's column for `backbone` and `n_tasks` (defaults:
    the result's own backbone and task count, through `reference_column`: a CLIP or Flan-T5 run
    against its own column, any other backbone against Table 1's ViT-B/32, at 8 tasks when the
    paper has no column for the count).

    `result`: the run's JSON as a dict (`tasks`, `summary`, `reference`). One row per method of the
    run: label, acc (run ACC), share (percent of the run's own gap), paper_acc and paper_share
    (None where the paper has no row for the method or no column for the task count).
    """
    if not isinstance(result, Mapping):
        raise TypeError(f"result must be a run's JSON as a dict, got {type(result).__name__}")
    missing = [key for key in ("tasks", "summary", "reference") if key not in result]
    if missing:
        raise ValueError(f"result lacks {', '.join(missing)}: pass the JSON written by `python -m nufilt run --out`")
    tasks = list(result["tasks"])
    reference = result["reference"]
    if not tasks or not all(row in reference for row in ("pretrained", "individual")):
        raise ValueError("result has no pre-trained and individual reference accuracies over its tasks")
    unscored = [task for task in tasks for row in ("pretrained", "individual") if task not in reference[row]]
    if unscored:
        raise ValueError(f"result's reference accuracies lack task(s) {', '.join(sorted(set(unscored)))}")
    unsummarized = [label for label, summary in result["summary"].items() if "acc_mean" not in summary]
    if unsummarized:
        raise ValueError(f"result's summary has no acc_mean for {', '.join(unsummarized)}")
    from .evaluation import reference_summary  # (torch and the methods: only when called)

    means = reference_summary({row: reference[row] for row in ("pretrained", "individual")}, tasks)
    default_backbone, default_tasks = reference_column(str(result.get("backbone", "")), len(tasks))
    paper_rows = paper_reference(default_backbone if backbone is None else backbone,
                                 default_tasks if n_tasks is None else n_tasks)
    paper_refs = paper_gap(paper_rows)
    paper_acc = {row["label"]: row["acc"] for row in paper_rows if row["label"] and not row["reference"]}
    out = []
    for label, summary in result["summary"].items():
        acc = summary["acc_mean"]
        theirs = paper_acc.get(label)
        out.append({
            "label": label, "acc": acc, "share": gap_share(acc, means["pretrained"], means["individual"]),
            "paper_acc": theirs,
            "paper_share": gap_share(theirs, paper_refs.get("pretrained"), paper_refs.get("individual")),
        })
    return out
