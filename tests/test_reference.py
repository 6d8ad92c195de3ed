"""The fast CAT and LOT against their loop-by-loop references (mergeflow.merge.reference)."""

import itertools

import pytest
import torch

from conftest import perturbed
from mergeflow.features import TaskStats
from mergeflow.merge import merge
from mergeflow.merge.reference import cat_reference, lot_reference


def _stats(state, seed, rank=None, zero=False):
    """Grams of ``rank`` random rows (full rank when None); ``zero``: an all-zero Gram and sqnorm."""
    g = torch.Generator().manual_seed(seed)
    st = TaskStats()
    for k, v in state.items():
        if k.endswith(("in_proj_weight", "out_proj.weight", "c_fc.weight", "c_proj.weight")):
            rows = rank or 2 * v.shape[1]
            x = torch.randn(rows, v.shape[1], generator=g) * (0.0 if zero else 1.0)
            st.gram[k], st.rows[k] = x.t() @ x, rows
        if k.endswith(".weight") and "ln_" in k:
            st.sqnorm[k], st.rows[k] = torch.rand(v.shape[0], generator=g) * 40 * (0.0 if zero else 1.0), 40
    return st


def _relative(a, b, pre) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in pre if pre[k].is_floating_point())
    den = sum(float((b[k].double() - pre[k].double()).pow(2).sum()) for k in pre if pre[k].is_floating_point())
    return (num / den) ** 0.5


def _setup(micro_state, rank=None, zero_task=None):
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(3)}
    stats = {t: _stats(micro_state, seed=10 + i, rank=rank, zero=(i == zero_task)) for i, t in enumerate(experts)}
    return experts, stats


# rank None: Grams of 2·d rows, M_k formed explicitly; rank 2: d_out (32) exceeds the joint factor width (8),
# so the fast path solves in the span of the factors
@pytest.mark.parametrize("rank,split_qkv,rescale,eig_order",
                         [(r, s, rs, o) for r, s, rs, o in itertools.product((None, 2), (True, False), (False, True),
                                                                              ("top", "bottom"))])
def test_cat_fast_equals_reference(micro_state, rank, split_qkv, rescale, eig_order):
    experts, stats = _setup(micro_state, rank)
    hp = {"alpha": 0.4, "c": 3, "lambda": 2.0, "c_ln": 3, "lambda_ln": 10.0, "c_shift": 2, "split_qkv": split_qkv,
          "eig_order": eig_order, "rescale": rescale}
    fast = merge("cat", micro_state, experts, stats=stats, **hp)
    ref = cat_reference(micro_state, experts, stats, alpha=0.4, c=3, lam=2.0, c_ln=3, lambda_ln=10.0, c_shift=2,
                        split_qkv=split_qkv, eig_order=eig_order, rescale=rescale)
    assert _relative(fast, ref, micro_state) < 1e-5


@pytest.mark.parametrize("rank", [None, 2])
def test_cat_fast_equals_reference_with_an_all_zero_gram(micro_state, rank):
    experts, stats = _setup(micro_state, rank, zero_task=1)
    hp = {"alpha": 0.4, "c": 3, "lambda": 2.0, "c_ln": 3, "lambda_ln": 10.0, "c_shift": 2}
    fast = merge("cat", micro_state, experts, stats=stats, **hp)
    ref = cat_reference(micro_state, experts, stats, alpha=0.4, c=3, lam=2.0, c_ln=3, lambda_ln=10.0, c_shift=2)
    assert _relative(fast, ref, micro_state) < 1e-5


def test_cat_fast_equals_reference_with_extra_linear_units(micro_state):
    experts, stats = _setup(micro_state)
    g = torch.Generator().manual_seed(3)
    for st in stats.values():  # conv1 on unfolded patches (d_in = 3·P·P) and proj on the pooled token
        for key in ("conv1.weight", "proj"):
            d_in = micro_state[key].reshape(micro_state[key].shape[0], -1).shape[1] if key == "conv1.weight" \
                else micro_state[key].shape[0]
            x = torch.randn(2 * d_in, d_in, generator=g)
            st.gram[key], st.rows[key] = x.t() @ x, 2 * d_in
    hp = {"alpha": 0.4, "c": 2, "lambda": 1.0, "c_ln": 2, "lambda_ln": 5.0, "c_shift": 2,
          "linear_extra": ["conv1", "proj"]}
    fast = merge("cat", micro_state, experts, stats=stats, **hp)
    ref = cat_reference(micro_state, experts, stats, alpha=0.4, c=2, lam=1.0, c_ln=2, lambda_ln=5.0, c_shift=2,
                        linear_extra=("conv1", "proj"))
    assert _relative(fast, ref, micro_state) < 1e-5


@pytest.mark.parametrize("rank", [None, 3])
def test_lot_fast_equals_reference(micro_state, rank):
    experts, stats = _setup(micro_state, rank)
    fast = merge("lot", micro_state, experts, stats=stats, **{"lambda": 1.2})
    ref = lot_reference(micro_state, experts, stats, lam=1.2)
    assert _relative(fast, ref, micro_state) < 1e-5
