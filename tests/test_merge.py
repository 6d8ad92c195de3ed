import pytest
import torch

from conftest import perturbed
from mergeflow.errors import MergeflowError
from mergeflow.features import TaskStats
from mergeflow.merge import METHODS, merge
from mergeflow.merge.cat import cat_basis, gram_factor
from mergeflow.merge.lot import lot_linear
from mergeflow.merge.ties import ties_vector, trim


def _gram_stats(state, d_rows=40, seed=0, rank=None):
    g = torch.Generator().manual_seed(seed)
    st = TaskStats()
    for k, v in state.items():
        if k.endswith(("in_proj_weight", "out_proj.weight", "c_fc.weight", "c_proj.weight")):
            d = v.shape[1]
            x = torch.randn(rank or d_rows, d, generator=g)
            st.gram[k], st.rows[k] = x.t() @ x, x.shape[0]
        if k.endswith(".weight") and ("ln_" in k):
            st.sqnorm[k], st.rows[k] = torch.rand(v.shape[0], generator=g) * d_rows, d_rows
    st.fisher = {k: torch.rand(v.shape, generator=g) for k, v in state.items()}
    st.grad = {k: torch.rand(v.shape, generator=g) for k, v in state.items()}
    return st


@pytest.fixture()
def setup(micro_state):
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(3)}
    stats = {t: _gram_stats(micro_state, seed=i) for i, t in enumerate(experts)}
    return micro_state, experts, stats


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_keeps_keys_shapes_dtypes(setup, name):
    pre, experts, stats = setup
    hp = {METHODS[name].scale: 0.5} if METHODS[name].scale else {}
    out = merge(name, pre, experts, stats=stats, **hp)
    assert list(out) == list(pre)
    for k in pre:
        assert out[k].shape == pre[k].shape and out[k].dtype == pre[k].dtype and torch.isfinite(out[k]).all()


def test_task_arithmetic_single_expert_alpha_one_is_the_expert(micro_state):
    expert = perturbed(micro_state, 7)
    out = merge("task_arithmetic", micro_state, {"a": expert}, alpha=1.0)
    for k in micro_state:
        torch.testing.assert_close(out[k], expert[k])


def test_ties_hand_example():
    tv = torch.tensor([[1.0, -2.0, 0.1, 3.0], [-1.5, -1.0, 0.2, -0.5], [2.0, 0.5, -0.3, -4.0]])
    trimmed = torch.stack([trim(t, 0.5) for t in tv])
    # threshold = the (4 - 2) = 2nd smallest magnitude of each task; entries at or above it stay
    assert torch.equal(trimmed, torch.tensor([[1.0, -2.0, 0.0, 3.0], [-1.5, -1.0, 0.0, -0.5], [2.0, 0.5, 0.0, -4.0]]))
    # sums [1.5, -2.5, 0, -1.5]: elected signs [+, -, (tie: sign of the sum of signs = -), -]
    assert torch.equal(ties_vector(trimmed, "sum"), torch.tensor([3.0, -3.0, 0.0, -4.5]))
    assert torch.equal(ties_vector(trimmed, "mean"), torch.tensor([1.5, -1.5, 0.0, -2.25]))


def test_lot_equals_regmean_at_full_rank(setup):
    pre, experts, _ = setup
    stats = {t: _gram_stats(pre, d_rows=300, seed=i) for i, t in enumerate(experts)}  # ΣG full rank
    lot = merge("lot", pre, experts, stats=stats, **{"lambda": 1.0})
    reg = merge("regmean", pre, experts, stats=stats, a=1.0)
    for k in stats["t0"].gram:
        torch.testing.assert_close(lot[k], reg[k], rtol=1e-5, atol=1e-5)


def test_lot_gradient_vanishes_and_keeps_pre_outside_span():
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(5, 6, generator=g) for _ in range(3)]
    xs = [torch.randn(1, 6, generator=g) for _ in range(3)]  # rank-deficient: 3 rows < d_in = 6
    grams = [x.t() @ x for x in xs]
    w = lot_linear(ts, grams).float()
    grad = sum((w - t) @ gm for t, gm in zip(ts, grams, strict=True))
    assert grad.abs().max() < 1e-4
    # θ_pre's component outside span(ΣG) survives in LOT (θ = θ_pre + T*), RegMean replaces it
    null = torch.linalg.svd(sum(grams)).Vh[-1]  # a direction with zero feature energy
    assert (w @ null).abs().max() < 1e-4  # LOT adds nothing there: θ_pre kept


def test_regmean_discards_pre_outside_span_lot_keeps_it(micro_state):
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(2)}
    stats = {t: _gram_stats(micro_state, seed=i, rank=4) for i, t in enumerate(experts)}
    lot = merge("lot", micro_state, experts, stats=stats, **{"lambda": 1.0})
    reg = merge("regmean", micro_state, experts, stats=stats, a=1.0)
    span = sum(stats[t].gram[key] for t in experts)
    null = torch.linalg.eigh(span).eigenvectors[:, 0]
    pre_null = micro_state[key] @ null
    torch.testing.assert_close(lot[key] @ null, pre_null, rtol=1e-4, atol=1e-4)
    assert (reg[key] @ null - pre_null).abs().max() > 1e-3


def test_cat_basis_maximises_objective():
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(12, 8, generator=g) for _ in range(3)]
    xs = [torch.randn(3, 8, generator=g) for _ in range(3)]
    factors = [gram_factor(x.t() @ x, 3, g) for x in xs]
    lam, c = 0.5, 3
    basis, values, _ = cat_basis(ws, factors, 0, c, lam, "top")
    m = sum(ws[i] @ (xs[0].t() @ xs[0] - lam * xs[i].t() @ xs[i]) @ ws[i].t() for i in (1, 2))
    eig = torch.linalg.eigvalsh(m).flip(0)
    expected = eig[:c][eig[:c] > 0].sum()
    torch.testing.assert_close(torch.trace(basis.t() @ m @ basis), expected, rtol=1e-4, atol=1e-4)
    for _ in range(50):
        q, _ = torch.linalg.qr(torch.randn(12, basis.shape[1], generator=g))
        assert torch.trace(q.t() @ m @ q) <= expected + 1e-4


def test_cat_huge_lambda_trims_no_linear_weight(setup):
    pre, experts, stats = setup
    hp = {"alpha": 0.4, "lambda": 1e9, "c_ln": 0, "c_shift": 0}
    out = merge("cat", pre, experts, stats=stats, **hp)
    ta = merge("task_arithmetic", pre, experts, alpha=0.4)
    for k in pre:
        torch.testing.assert_close(out[k], ta[k], rtol=1e-5, atol=1e-5)


def test_cat_shift_masks_zero_exactly_the_protected_entries(micro_state):
    key = "ln_post.bias"
    experts = {f"t{i}": {k: v.clone() for k, v in micro_state.items()} for i in range(2)}
    experts["t0"][key] = micro_state[key] + torch.tensor([5.0] + [0.1] * (len(micro_state[key]) - 1))
    d = len(micro_state[key])
    t1 = 1.0 + 0.01 * torch.arange(d)
    experts["t1"][key] = micro_state[key] + t1  # largest at the last entry
    stats = {t: _gram_stats(micro_state, seed=i) for i, t in enumerate(experts)}
    out = merge("cat", micro_state, experts, stats=stats, alpha=1.0, c_shift=1, c=0, c_ln=0)
    delta = out[key] - micro_state[key]
    assert abs(float(delta[0]) - 5.0) < 1e-5  # t1 zeroed at t0's protected entry
    assert abs(float(delta[-1]) - float(t1[-1])) < 1e-5  # t0 zeroed at t1's protected entry
    torch.testing.assert_close(delta[1:-1], 0.1 + t1[1:-1])


def test_lot_layernorm_is_energy_weighted_average(micro_state):
    key = "ln_pre.weight"
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(2)}
    stats = {t: _gram_stats(micro_state, seed=i) for i, t in enumerate(experts)}
    out = merge("lot", micro_state, experts, stats=stats, **{"lambda": 1.0})
    e = [stats[t].sqnorm[key] for t in experts]
    t = [experts[n][key] - micro_state[key] for n in experts]
    torch.testing.assert_close(out[key] - micro_state[key], (e[0] * t[0] + e[1] * t[1]) / (e[0] + e[1]))


def test_iso_c_flattens_the_spectrum(micro_state):
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(2)}
    out = merge("iso_c", micro_state, experts, alpha=1.0)
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    s = torch.linalg.svdvals(out[key] - micro_state[key])
    torch.testing.assert_close(s, torch.full_like(s, float(s.mean())), rtol=1e-4, atol=1e-5)


def test_bad_inputs(setup):
    pre, experts, stats = setup
    with pytest.raises(MergeflowError, match="unknown merge method 'magic'"):
        merge("magic", pre, experts)
    with pytest.raises(MergeflowError, match="unknown hyper-parameter 'beta'; accepted: alpha"):
        merge("task_arithmetic", pre, experts, beta=1.0)
    with pytest.raises(MergeflowError, match="must be >= 0"):
        merge("cat", pre, experts, stats=stats, **{"lambda": -1.0})
    with pytest.raises(MergeflowError, match="needs statistics"):
        merge("lot", pre, experts)
    bad = {**experts, "t9": {**experts["t0"], "proj": torch.zeros(3)}}
    with pytest.raises(MergeflowError, match="expert 't9': proj has shape"):
        merge("task_arithmetic", pre, bad)
    nan = {**experts, "t9": {**experts["t0"], "proj": experts["t0"]["proj"] * float("nan")}}
    with pytest.raises(MergeflowError, match="expert 't9': proj contains NaN"):
        merge("task_arithmetic", pre, nan)
