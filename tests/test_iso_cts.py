"""Iso-CTS (algorithms.md §7.1): its properties on small float64 units."""

import pytest
import torch

from mergeflow.errors import MergeflowError
from mergeflow.merge import merge
from mergeflow.merge.common import isotropic
from mergeflow.merge.iso_cts import iso_cts_unit, subspace_sizes


def _vectors(k=3, shape=(12, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(k)]


def test_subspace_sizes_follow_the_codes_rounding():
    assert subspace_sizes(768, 8, 0.8) == (616, 19)  # the spec's B/32 figures
    assert subspace_sizes(512, 8, 0.8) == (408, 13)
    assert subspace_sizes(50, 8, 0.8) == (42, 1)
    assert subspace_sizes(10, 4, 0.5) == (6, 1)  # s = round(5 / 4) = 1, k = 10 − 4
    assert subspace_sizes(10, 4, 0.0 + 1e-9) == (2, 2)  # s = round(10 / 4) = round(2.5) = 2: half to even
    with pytest.raises(MergeflowError, match=r"iso_cts: common_fraction 0.01 leaves no common subspace for a unit "
                                             r"of rank 5 and 3 tasks \(k = -1\)"):
        subspace_sizes(5, 3, 0.01)


def test_fraction_one_is_iso_c():
    vectors = _vectors()
    assert torch.allclose(iso_cts_unit(vectors, 1.0), isotropic(sum(vectors)), atol=1e-12)


def test_one_full_rank_task_is_iso_c_of_it_for_any_fraction():
    (t,) = _vectors(1)
    for fraction in (0.3, 0.5, 0.8):
        assert torch.allclose(iso_cts_unit([t], fraction), isotropic(t), atol=1e-10), fraction


def test_the_result_is_isotropic_with_the_mean_of_the_selected_values():
    vectors = _vectors(3, (12, 8), seed=1)
    delta = iso_cts_unit(vectors, 0.5)
    values = torch.linalg.svdvals(delta)
    assert torch.allclose(values, values.mean().expand(8), rtol=1e-10)  # every direction alike, rank r = 8
    k, s = subspace_sizes(8, 3, 0.5)
    sigma = torch.linalg.svdvals(sum(vectors))
    u = torch.linalg.svd(sum(vectors), full_matrices=False)[0][:, :k]
    own = [torch.linalg.svdvals(t - u @ (u.t() @ t))[:s].sum() for t in vectors]
    assert values[0] == pytest.approx(float((sigma[:k].sum() + sum(own)) / 8), rel=1e-10)


def test_the_task_order_does_not_matter():
    vectors = _vectors(3, (10, 9), seed=2)
    assert torch.allclose(iso_cts_unit(vectors, 0.6), iso_cts_unit(vectors[::-1], 0.6), atol=1e-10)


def test_zero_task_vectors_give_zero_and_the_method_routes_like_iso_c(micro_state):
    assert not iso_cts_unit([torch.zeros(4, 3)] * 2, 0.8).any()
    g = torch.Generator().manual_seed(0)
    experts = {f"t{i}": {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in micro_state.items()}
               for i in range(3)}
    out = merge("iso_cts", micro_state, experts, alpha=1.0, common_fraction=1.0)
    iso = merge("iso_c", micro_state, experts, alpha=1.0)
    for key in micro_state:  # f = 1: Iso-C on every 2-D unit, the mean elsewhere
        assert torch.allclose(out[key], iso[key], atol=1e-5), key
    bias = "transformer.resblocks.0.attn.in_proj_bias"
    mean = torch.stack([experts[t][bias] - micro_state[bias] for t in experts]).mean(0)
    cts = merge("iso_cts", micro_state, experts, alpha=1.5, common_fraction=0.8)
    assert torch.allclose(cts[bias], micro_state[bias] + 1.5 * mean, atol=1e-6)


def _by_full_svds(vectors, fraction):
    """§7.1 written with a full SVD for every step (what the fast path computes only in part)."""
    def polar(m):
        a, _, bh = torch.linalg.svd(m, full_matrices=False)
        return a @ bh

    total = sum(vectors)
    r = min(total.shape)
    k, s = subspace_sizes(r, len(vectors), fraction)
    u, sigma, vh = torch.linalg.svd(total, full_matrices=False)
    us, vs, kept = [u[:, :k]], [vh[:k].t()], sigma[:k].sum()
    for t in vectors:
        p, mu, qh = torch.linalg.svd(t - u[:, :k] @ (u[:, :k].t() @ t), full_matrices=False)
        us.append(p[:, :s])
        vs.append(qh[:s].t())
        kept = kept + mu[:s].sum()
    return (kept / r) * (polar(torch.cat(us, 1)) @ polar(torch.cat(vs, 1)).t())


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (24, 24)])
def test_the_partial_decompositions_equal_full_svds(shape):
    """Only the kept triplets are computed (Gram eigenpairs; a tall unit's residuals through their Grams, a
    wide or square one's through the basis of the directions the common subspace leaves out; the task part of
    polar(U*) alone): the same Δ as full SVDs, float64 and float32."""
    g = torch.Generator().manual_seed(3)
    common = torch.randn(shape[0], 4, generator=g, dtype=torch.float64) @ torch.randn(4, shape[1], generator=g,
                                                                                        dtype=torch.float64)
    vectors = [common + 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(4)]
    expected = _by_full_svds(vectors, 0.6)
    assert torch.allclose(iso_cts_unit(vectors, 0.6), expected, atol=1e-10)
    single = iso_cts_unit([v.float() for v in vectors], 0.6)
    assert (single.double() - expected).abs().max() < 1e-5 * expected.abs().max()
