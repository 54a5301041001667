"""TIES trimming, sign election and disjoint mean, and the continual recursion."""

import pytest
import torch

from nufilt.merge import continual_merge
from nufilt.methods.ties import elect_and_merge, magnitude_threshold, trim


def test_threshold_keeps_the_top_k_percent_over_all_tensors():
    vectors = [torch.tensor([1.0, -5.0, 2.0]), torch.tensor([[4.0, -3.0], [0.5, 6.0]])]
    # 7 entries, top 40% -> 3 kept: 6, -5, 4
    threshold = magnitude_threshold(lambda: vectors, 40.0)
    assert threshold == 4.0
    kept = sum(int((trim(v, threshold) != 0).sum()) for v in vectors)
    assert kept == 3


def test_sign_election_and_disjoint_mean():
    a = torch.tensor([2.0, 3.0, -1.0, 0.0])
    b = torch.tensor([4.0, -1.0, -3.0, 0.0])
    # sums: 6 (+), 2 (+), -4 (-), 0 -> means over agreeing non-zero entries
    torch.testing.assert_close(elect_and_merge([a, b]), torch.tensor([3.0, 3.0, -2.0, 0.0]))
    # the sum merge (the authors' continual config) adds the agreeing entries instead
    torch.testing.assert_close(elect_and_merge([a, b], "sum"), torch.tensor([6.0, 3.0, -4.0, 0.0]))


def test_continual_ties_adds_scaled_ties_of_previous_merged_and_new_task_vectors():
    pretrained = {"w.weight": torch.zeros(1, 5)}
    first = {"w.weight": torch.tensor([[10.0, 1.0, 1.0, 1.0, 1.0]])}
    second = {"w.weight": torch.tensor([[-1.0, -8.0, 1.0, 1.0, 1.0]])}
    merged = list(continual_merge(pretrained, [first, second], "ties", scale=0.5, top_k=20.0))
    # step 1: TIES(0, τ1) keeps only the top entry of τ1
    torch.testing.assert_close(merged[0]["w.weight"], torch.tensor([[5.0, 0.0, 0.0, 0.0, 0.0]]))
    # step 2: trimmed τ̄1 = [5,0,0,0,0], trimmed τ2 = [0,-8,0,0,0] -> disjoint, no conflict
    torch.testing.assert_close(merged[1]["w.weight"], torch.tensor([[7.5, -4.0, 0.0, 0.0, 0.0]]))


def test_continual_ties_with_the_sum_merge_adds_agreeing_entries():
    pretrained = {"w.weight": torch.zeros(1, 5)}
    first = {"w.weight": torch.tensor([[10.0, 1.0, 1.0, 1.0, 1.0]])}
    second = {"w.weight": torch.tensor([[6.0, 0.0, 0.0, 0.0, 0.0]])}
    options = {"scale": 0.5, "top_k": 20.0}
    mean = list(continual_merge(pretrained, [first, second], "ties", **options))[-1]
    total = list(continual_merge(pretrained, [first, second], "ties", merge="sum", **options))[-1]
    # τ̄1 = [5,0,0,0,0] and τ2 = [6,0,...] agree on entry 0: mean 5.5, sum 11, each times λ = 0.5
    torch.testing.assert_close(mean["w.weight"], torch.tensor([[7.75, 0.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(total["w.weight"], torch.tensor([[10.5, 0.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="merge"):
        continual_merge(pretrained, [first], "ties", merge="max")


def test_streaming_threshold_equals_a_global_kthvalue_without_concatenating():
    generator = torch.Generator().manual_seed(0)
    # heavy-tailed values, many ties at zero, and more entries than one histogram bin may hold
    heavy = torch.randn(1500, 2000, generator=generator) ** 3
    vectors = [heavy, torch.zeros(700, 3000), torch.randn(10, generator=generator), heavy[:5].clone()]
    flat = torch.cat([v.abs().flatten() for v in vectors])
    for top_k in (0.001, 1.0, 20.0, 63.0, 100.0):
        n_keep = -(-flat.numel() * top_k // 100)
        expected = float(flat.kthvalue(int(flat.numel() - n_keep + 1)).values)
        assert magnitude_threshold(lambda: vectors, top_k, bins=64) == expected
