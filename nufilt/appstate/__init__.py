"""The app's logic without Streamlit: choices, run configuration, a step-by-step multi-method run.

The Streamlit pages stay thin: they turn widget values into a `RunConfig` (names and numbers
only), ask for a `MultiRun` keyed by it, call `step()` / `run_to_end()` / `reset()`, and plot the
tidy tables the run exposes with `nufilt.figures`. Everything here is testable without a browser.
"""

from __future__ import annotations

from ..analysis.activations import clamp_samples
from ..analysis.affinity import vector_bases
from ..backbones.base import DelegatingBackbone
from ..evaluation import parse_order_indices
from ..methods import COMMON_OPTIONS
from ..paper import reference_column
from .backbones import (
    BACKBONE_CHOICES,
    EVAL_BATCH,
    PAPER_GROUPS,
    AppBackbone,
    BackboneChoice,
    ProgressFn,
    app_threads,
    backbone_choice,
    device_summary,
    open_backbone,
    pool_size,
    task_groups,
    zoo_preset,
    zoo_ready,
)
from .compare import QUALITATIVE_CLAIMS, comparison_table, qualitative_checks
from .exports import export_safetensors, export_zip, save_to_folder
from .geometry import default_pairs, ecdf_with_layers
from .jobs import APP_WORKERS_ENV, CHEAP_PRESETS, RAY_WORTH_SECONDS, grid_workers
from .options import OptionField, base_method, changed_options, method_labels, option_fields
from .orders import ORDER_MODES, order_modes, parse_custom_order, resolve_order
from .prepare import PrepareJob
from .ranks import MAX_SWEEP_POINTS, layer_widths, parse_values, rank_limit
from .session import GEOMETRY_RANK, LAYER_TABLE, MultiRun, RunConfig, make_config

__all__ = [
    "APP_WORKERS_ENV",
    "AppBackbone",
    "BACKBONE_CHOICES",
    "BackboneChoice",
    "CHEAP_PRESETS",
    "COMMON_OPTIONS",
    "DelegatingBackbone",
    "EVAL_BATCH",
    "GEOMETRY_RANK",
    "LAYER_TABLE",
    "MAX_SWEEP_POINTS",
    "MultiRun",
    "ORDER_MODES",
    "OptionField",
    "PAPER_GROUPS",
    "PrepareJob",
    "ProgressFn",
    "QUALITATIVE_CLAIMS",
    "RAY_WORTH_SECONDS",
    "RunConfig",
    "app_threads",
    "backbone_choice",
    "base_method",
    "changed_options",
    "clamp_samples",
    "comparison_table",
    "default_pairs",
    "device_summary",
    "ecdf_with_layers",
    "export_safetensors",
    "export_zip",
    "grid_workers",
    "layer_widths",
    "make_config",
    "method_labels",
    "open_backbone",
    "option_fields",
    "order_modes",
    "parse_custom_order",
    "parse_order_indices",
    "parse_values",
    "pool_size",
    "qualitative_checks",
    "rank_limit",
    "reference_column",
    "resolve_order",
    "save_to_folder",
    "task_groups",
    "vector_bases",
    "zoo_preset",
    "zoo_ready",
]
