#!/usr/bin/env bash
# The GPU check of issue 16, under 5 minutes on one GPU: the 8-task ViT-B/32-shaped NUFILT merge
# (merge compute and peak GPU memory, svd="auto" and "exact"), and the four-spectrum equal-result
# table on CUDA (the authors' reference runs on the CPU). Run from the repository root:
#     bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this check needs a GPU")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PY
nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv || true
uptime
timeout 280 python bench/merge_speed.py --device cuda --skip-speed --merge-tasks 8 --equal-blocks 2
