"""Subspace geometry and stability/plasticity analysis (paper Sec. 3.3-3.4, Fig. 2, 4, 5).

Plain functions returning tensors, NumPy arrays or tidy pandas DataFrames, for the app and the CLI:
- `activations`: hooks -> per-layer input second moments E[x xᵀ] and eigenbases (cached);
- `affinity`: Eq. 5 tables, data x vector matrices (mean / p90, attention / MLP), ECDFs;
- `stability`: Eq. 3-4 losses per step and layer, harmonic mean;
- `corollary`: both sides of Eq. 11 per layer and step;
- `trace`: per-step spectra, filtered energy, LoRA loss curves and norms of a merge run;
- `sweeps`: Fig. 4 rank sensitivity (ACC/BWT per rank);
- `dynamics`, `report`: one pass over runs, and the whole analysis as a JSON document.
"""

from .activations import (
    LayerStatistics,
    activation_statistics,
    clear_memory_cache,
    collect_statistics,
    find_linear_modules,
    selected_layers,
    task_statistics,
)
from .affinity import (
    affinity_ecdf,
    affinity_matrix,
    affinity_table,
    backbone_affinity,
    diagonal_dominance,
    vector_bases,
)
from .corollary import corollary_bound, step_bounds, summarize_bounds
from .dynamics import Dynamics, analyze_dynamics
from .report import analyze
from .runs import CachedBackbone, StepRecord, merge_steps, resolve_spec
from .stability import harmonic_mean, quadratic_loss, step_losses, summarize_losses
from .sweeps import acc_bwt_run, rank_sweep, summarize_sweep, sweep_settings
from .trace import Trace, step_trace, trace_run

__all__ = [
    "CachedBackbone",
    "Dynamics",
    "LayerStatistics",
    "StepRecord",
    "Trace",
    "acc_bwt_run",
    "activation_statistics",
    "affinity_ecdf",
    "affinity_matrix",
    "affinity_table",
    "analyze",
    "analyze_dynamics",
    "clear_memory_cache",
    "backbone_affinity",
    "collect_statistics",
    "corollary_bound",
    "diagonal_dominance",
    "find_linear_modules",
    "harmonic_mean",
    "merge_steps",
    "quadratic_loss",
    "rank_sweep",
    "resolve_spec",
    "selected_layers",
    "step_bounds",
    "step_losses",
    "step_trace",
    "summarize_bounds",
    "summarize_losses",
    "summarize_sweep",
    "sweep_settings",
    "task_statistics",
    "trace_run",
    "vector_bases",
]
