"""CDBridge's token merging (train/merging.py): plans, closures, ToMe equivalence, gradients."""

from __future__ import annotations

import pytest
import torch
from dogmacache.train import merging
from dogmacache.train.merging import merge_plan, plan_from_pairs, sample_rate


def tome_pairs(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain bipartite soft matching as ToMe describes it (A = even, B = odd, the r best A tokens merge):
    (merged A positions, their B partners' positions), both sorted by A position, for one sequence (N, D)."""
    unit = metric / metric.norm(dim=-1, keepdim=True)
    a, b = unit[::2], unit[1::2]
    node_max, node_idx = (a @ b.T).max(dim=-1)
    src = node_max.argsort(descending=True)[:r].sort().values
    return src * 2, node_idx[src] * 2 + 1


def test_sizes_sum_to_n_and_length_drops_by_merged_pairs():
    metric = torch.randn(3, 10, 4, generator=torch.Generator().manual_seed(0))
    plan = merge_plan(metric, torch.tensor([0.0, 0.2, 0.5]))
    assert plan.n_merged.tolist() == [0, 2, 5]
    assert plan.sizes.sum(dim=1).tolist() == [10.0, 10.0, 10.0]
    assert plan.valid.sum(dim=1).tolist() == [10, 8, 5]  # N' = N - merged pairs
    assert plan.merge(metric).shape == (3, 10, 4)  # padded to the largest N' of the batch (row 0 merges nothing)


def test_protected_and_padded_tokens_never_merge():
    metric = torch.ones(1, 8, 2)  # every pair identical: anything allowed to merge would
    mergeable = torch.tensor([[False, True, True, True, True, True, False, False]])
    plan = merge_plan(metric, 0.5, mergeable=mergeable)
    assert plan.n_merged.item() > 0
    assert plan.kept[0, [0, 6, 7]].all()
    untouched = plan.sizes[0][plan.slot[0, [0, 6, 7]]]  # their slots hold nobody else
    assert untouched.tolist() == [1.0, 1.0, 1.0]


def test_unmerge_of_merge_is_identity_when_merged_pairs_are_identical():
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]]])
    plan = merge_plan(x, 2 / 6)
    assert plan.n_merged.item() == 2
    assert torch.equal(plan.unmerge(plan.merge(x)), x)


def test_merged_sequence_keeps_positional_order():
    absorbed = torch.tensor([[False, True, False, False, True]])
    partner = torch.tensor([[0, 3, 0, 0, 0]])  # position 1 -> 3, position 4 -> 0
    plan = plan_from_pairs(absorbed, partner)
    assert plan.slot.tolist() == [[0, 2, 1, 2, 0]]
    x = torch.arange(5.0).reshape(1, 5, 1)
    assert plan.merge(x)[0, :, 0].tolist() == [2.0, 2.0, 2.0]  # (0+4)/2, 2, (1+3)/2
    assert plan.unmerge(plan.merge(x)).shape == x.shape


def test_ties_at_the_threshold_merge_exactly_the_rate():
    plan = merge_plan(torch.ones(2, 8, 3), 0.25)  # every score ties at 1
    assert plan.n_merged.tolist() == [2, 2]


def test_identity_fast_path():
    x = torch.randn(2, 6, 3)
    plan = merge_plan(x, 0.0)
    assert plan.merge(x) is x and plan.unmerge(x) is x


def test_same_pairs_as_tome_when_threshold_reproduces_r():
    generator = torch.Generator().manual_seed(1)
    metric = torch.randn(4, 16, 8, generator=generator)
    for r in (1, 3, 6):
        plan = merge_plan(metric, r / 16)  # fixed split: A = even positions, as ToMe
        for row in range(4):
            src, dst = tome_pairs(metric[row], r)
            mine = (~plan.kept[row]).nonzero()[:, 0]
            assert mine.tolist() == src.tolist() and len(mine) == r
            assert plan.slot[row, src].tolist() == plan.slot[row, dst].tolist()


def test_random_split_is_seeded():
    metric = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(2))
    first = merge_plan(metric, 0.25, generator=torch.Generator().manual_seed(5))
    again = merge_plan(metric, 0.25, generator=torch.Generator().manual_seed(5))
    fixed = merge_plan(metric, 0.25)
    assert torch.equal(first.slot, again.slot)
    assert first.n_merged.tolist() == [3, 3]
    assert not torch.equal(first.slot, fixed.slot)


def test_gradients_flow_through_merged_tokens():
    x = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(3), requires_grad=True)
    plan = merge_plan(x, 0.25)
    plan.unmerge(plan.merge(x)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    absorbed = (~plan.kept[0]).nonzero()[:, 0]
    assert len(absorbed) == 2 and (x.grad[0, absorbed] != 0).all()


def test_rates_outside_the_range_are_refused_and_samples_clipped():
    with pytest.raises(ValueError, match="outside"):
        merge_plan(torch.randn(1, 4, 2), 0.7)
    rates = sample_rate(0.3, 1.0, 1000, torch.Generator().manual_seed(0))
    assert rates.min() == 0.0 and rates.max() == 0.5
    assert sample_rate(0.3, 1.0, 2, None).tolist() == pytest.approx([0.3, 0.3])


def test_a_plan_records_the_tokens_that_could_merge():
    x = torch.randn(3, 10, 4)
    plan = merging.merge_plan(x, 0.5, generator=torch.Generator().manual_seed(7))
    assert plan.in_a.tolist() == merging.split_ab(10, 3, torch.Generator().manual_seed(7), x.device).tolist()
    assert not (~plan.kept & ~plan.in_a).any()  # only set A is ever absorbed
    assert merging.merge_plan(x, 0.25).in_a[0].tolist() == [i % 2 == 0 for i in range(10)]  # evaluation: even


@pytest.mark.parametrize("n", [3, 5, 7, 11])
def test_a_round_merges_at_most_half_the_tokens_of_an_odd_sequence(n):
    """round(0.5 * n) rounds half to even: 2 of 3, 4 of 7; at most floor(n / 2) may merge."""
    metric = torch.randn(2, n, 4, generator=torch.Generator().manual_seed(n))
    plan = merge_plan(metric, torch.tensor([0.5, 0.5]))
    assert plan.n_merged.tolist() == [n // 2, n // 2]
    assert merging.merge_count(torch.tensor([0.5, 0.25]), torch.tensor([7, 8])).tolist() == [3, 2]
