"""Shared test configuration. Add fixtures below; keep this file shared by all test folders."""

import os

import torch

# Tiny matrices run fastest on one thread, and a second busy core can slow multi-threaded small
# SVDs by orders of magnitude (shared/notes). Tests opt in to more threads explicitly.
torch.set_num_threads(int(os.environ.get("NUFILT_TEST_THREADS", "1")))
