"""Shared test configuration. Add fixtures below; keep this file shared by all test folders."""

import os

import pytest
import torch

# Tiny matrices run fastest on one thread, and a second busy core can slow multi-threaded small
# SVDs by orders of magnitude (shared/notes). Tests opt in to more threads explicitly.
torch.set_num_threads(int(os.environ.get("NUFILT_TEST_THREADS", "1")))


# ---------------------------------------------------------------- the embedded micro zoo


@pytest.fixture(scope="session")
def micro_zoo_dir(tmp_path_factory):
    """A cache folder holding the built `micro` tiny-vit zoo (3 tasks, seconds), shared per session.

    Treat it as read-only; tests that damage a cache copy it first.
    """
    from nufilt.backbones.tiny_vit import make_backbone

    cache_dir = tmp_path_factory.mktemp("micro-zoo-cache")
    make_backbone(preset="micro", cache_dir=cache_dir).prepare()
    return cache_dir


@pytest.fixture
def micro_zoo(micro_zoo_dir):
    """A fresh `tiny-vit` backbone over the cached micro zoo."""
    from nufilt.backbones.tiny_vit import make_backbone

    return make_backbone(preset="micro", cache_dir=micro_zoo_dir)
