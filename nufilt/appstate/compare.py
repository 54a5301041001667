"""The run against the paper: qualitative claims and the comparison table (the reference column:
`nufilt.paper.reference_column`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

# Claims of the paper's Table 1 that a run on any backbone can be checked against.
QUALITATIVE_CLAIMS = (
    "NUFILT has the highest ACC of the continual methods",
    "NUFILT forgets least (BWT closest to zero)",
    "every continual method forgets (BWT < 0)",
    "the ACC ranking of the methods agrees with the paper's (Kendall τ > 0)",
)


def _kendall_tau(first: Sequence[float], second: Sequence[float]) -> float:
    pairs = concordant = 0
    for i in range(len(first)):
        for j in range(i + 1, len(first)):
            product = (first[i] - first[j]) * (second[i] - second[j])
            if product != 0:
                pairs += 1
                concordant += 1 if product > 0 else -1
    return concordant / pairs if pairs else float("nan")


def qualitative_checks(run: Mapping[str, Mapping[str, float]], paper_rows: Sequence[Mapping]) -> pd.DataFrame:
    """Each claim of `QUALITATIVE_CLAIMS`: does it hold in the paper's column, and in this run?

    `run`: {method label: {"acc": ..., "bwt": ...}}; `paper_rows`: `paper.paper_reference` rows.
    Only methods present in both are compared. Columns: claim, paper, run (True/False/None),
    note (why a claim cannot be checked, else empty).
    """
    paper = {row["label"]: row for row in paper_rows if row.get("label") and row.get("acc") is not None}
    common = [label for label in run if label in paper]

    def facts(table: Mapping[str, Mapping[str, float]]) -> list[bool | None]:
        if not common:
            return [None] * len(QUALITATIVE_CLAIMS)
        acc = {m: table[m]["acc"] for m in common}
        bwt = {m: table[m]["bwt"] for m in common}
        has_nufilt = "nufilt" in common and len(common) > 1
        return [
            max(acc, key=acc.get) == "nufilt" if has_nufilt else None,
            min(bwt, key=lambda m: abs(bwt[m])) == "nufilt" if has_nufilt else None,
            all(value < 0 for value in bwt.values()),
            None,
        ]

    paper_facts = facts(paper)
    run_facts = facts(run)
    notes = [""] * len(QUALITATIVE_CLAIMS)
    named = ", ".join(common) or "none"
    if not ("nufilt" in common and len(common) > 1):
        notes[0] = notes[1] = f"needs nufilt and another method the paper reports (compared: {named})"
    if not common:
        notes[2] = "no method of this run is in the paper's table"
    if len(common) >= 3:
        tau = _kendall_tau([paper[m]["acc"] for m in common], [run[m]["acc"] for m in common])
        paper_facts[3], run_facts[3] = True, bool(tau > 0)
        notes[3] = f"τ = {tau:.2f} over {len(common)} methods"
    else:
        notes[3] = f"a ranking needs at least 3 methods the paper reports (compared: {named})"
    return pd.DataFrame({"claim": QUALITATIVE_CLAIMS, "paper": paper_facts, "run": run_facts, "note": notes})


def comparison_table(run: Mapping[str, Mapping[str, float]], paper_rows: Sequence[Mapping]) -> pd.DataFrame:
    """Long table for `figures.paper_comparison_bars`: method, source, acc, acc_std, bwt, bwt_std."""
    rows = []
    for row in paper_rows:
        if row.get("label") in run and row.get("acc") is not None:
            rows.append({"method": row["label"], "source": "paper", "acc": row["acc"], "acc_std": row.get("acc_std"),
                         "bwt": row.get("bwt"), "bwt_std": row.get("bwt_std")})
    for label, values in run.items():
        rows.append({"method": label, "source": "this run", "acc": values["acc"],
                     "acc_std": values.get("acc_std"), "bwt": values["bwt"], "bwt_std": values.get("bwt_std")})
    return pd.DataFrame(rows, columns=["method", "source", "acc", "acc_std", "bwt", "bwt_std"]).astype(
        {"acc_std": float, "bwt_std": float, "bwt": float})
