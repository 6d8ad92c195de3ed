import math

import pytest
import torch

from conftest import perturbed
from mergeflow.errors import MergeflowError
from mergeflow.features import TaskStats
from mergeflow.merge import METHODS, merge
from mergeflow.merge.cat import cat_bases, gram_factor, project_out, trimmed_total
from mergeflow.merge.common import (
    add_outer_lower_,
    polar_factor,
    run_threaded,
    stacked_task_vectors,
    top_singular,
    unflatten,
)
from mergeflow.merge.dare import drop_and_rescale_, dropped_sum
from mergeflow.merge.lot import lot_linear
from mergeflow.merge.pcb import pcb_vector
from mergeflow.merge.tatr import cross_magnitude
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


# the methods that run the encoder or return per-task parts: tests/test_task_aware.py
@pytest.mark.parametrize("name", [n for n, s in METHODS.items() if not s.uses and not s.task_aware])
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
    assert torch.equal(ties_vector(trimmed, "sum", chunk=1), torch.tensor([3.0, -3.0, 0.0, -4.5]))  # chunked


def test_tatr_omega_and_shared_mask_by_hand():
    g = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, 1.0, -1.0])]
    t = [torch.tensor([2.0, -1.0, 0.0]), torch.tensor([-1.0, 3.0, 1.0])]
    # Ω = |g_1||T_2| + |g_2||T_1| = [1 + 1, 0 + 1, 2 + 0]
    torch.testing.assert_close(cross_magnitude(g, t), torch.tensor([2.0, 1.0, 2.0]))
    pre = {"w": torch.zeros(3)}
    experts = {"a": {"w": t[0]}, "b": {"w": t[1]}}
    stats = {}
    for name, grad in zip(experts, g, strict=True):
        stats[name] = TaskStats()
        stats[name].grad["w"] = grad
    diag: dict = {}
    # quantile 1/3: the threshold is the 1st smallest Ω (1.0): only the middle entry stays, for both tasks
    out = merge("tatr", pre, experts, stats=stats, diagnostics=diag, alpha=1.0, quantile=1 / 3, variant="gradient")
    torch.testing.assert_close(out["w"], torch.tensor([0.0, 2.0, 0.0]))
    assert diag["dropped_fraction"] == pytest.approx(2 / 3)


def test_dare_masks_are_seeded_and_p_zero_is_task_arithmetic(setup):
    pre, experts, _ = setup
    hp = dict(alpha=0.5, density=0.2, merge_func="sum", base="task_arithmetic")
    ta = merge("task_arithmetic", pre, experts, alpha=0.5)
    same = merge("dare", pre, experts, p=0.0, seed=0, **hp)
    for k in pre:
        torch.testing.assert_close(same[k], ta[k])
    a, b = (merge("dare", pre, experts, p=0.5, seed=3, **hp) for _ in range(2))
    c = merge("dare", pre, experts, p=0.5, seed=4, **hp)
    floating = [k for k in pre if pre[k].is_floating_point()]
    assert all(torch.equal(a[k], b[k]) for k in pre)
    assert any(not torch.equal(a[k], c[k]) for k in floating)


def test_dare_summed_task_by_task_is_the_stacked_path_bit_for_bit(setup):
    """Task arithmetic after the drop sums one task at a time; the masks and the sum are those of the stacked
    vectors (what TIES after the drop uses), so a stored DARE model does not move."""
    pre, experts, _ = setup
    keys = [k for k in pre if pre[k].is_floating_point()]
    tau = stacked_task_vectors(pre, experts, keys)
    drop_and_rescale_(tau, [pre[k].shape for k in keys], 0.7, torch.Generator().manual_seed(5))
    expected = unflatten(tau.sum(0), pre, keys)
    got = dropped_sum(pre, experts, keys, 0.7, torch.Generator().manual_seed(5))
    assert all(torch.equal(got[k], expected[k]) for k in keys)


def test_weight_averaging_is_the_stacked_mean_bit_for_bit(setup):
    pre, experts, _ = setup
    out = merge("weight_averaging", pre, experts)
    for k, v in pre.items():
        if v.is_floating_point():
            assert torch.equal(out[k], torch.stack([sd[k] for sd in experts.values()]).mean(0).to(v.dtype)), k


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (30, 30)])
def test_gram_based_polar_and_top_singular_match_the_svd(shape):
    g = torch.Generator().manual_seed(0)
    for m in (torch.randn(shape, generator=g),
              torch.randn(shape[0], 3, generator=g) @ torch.randn(3, shape[1], generator=g)):  # rank 3: SVD fallback
        u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
        q, sv = polar_factor(m)
        torch.testing.assert_close(sv.double(), s, rtol=1e-5, atol=1e-5)
        if s[-1] > 1e-6 * s[0]:  # the polar factor is unique only at full rank
            torch.testing.assert_close(q.double(), u @ vh, rtol=1e-5, atol=1e-5)
        for r in (1, 3):
            ur, sr, vr = top_singular(m, r)
            torch.testing.assert_close(sr.double(), s[:r], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close((ur * sr) @ vr.t(), ((u[:, :r] * s[:r]) @ vh[:r]).float(), rtol=1e-4,
                                       atol=1e-5)


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
    factors = [gram_factor(x.t() @ x, 3) for x in xs]
    lam, c = 0.5, 3
    basis, values, _ = cat_bases(ws, factors, c, lam, "top")[0]
    m = sum(ws[i] @ (xs[0].t() @ xs[0] - lam * xs[i].t() @ xs[i]) @ ws[i].t() for i in (1, 2))
    eig = torch.linalg.eigvalsh(m).flip(0)
    expected = eig[:c][eig[:c] > 0].sum()
    torch.testing.assert_close(torch.trace(basis.t() @ m @ basis), expected, rtol=1e-4, atol=1e-4)
    for _ in range(50):
        q, _ = torch.linalg.qr(torch.randn(12, basis.shape[1], generator=g))
        assert torch.trace(q.t() @ m @ q) <= expected + 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_outer_lower_adds_the_outer_product_in_the_lower_triangle(dtype):
    g = torch.Generator().manual_seed(5)
    m0 = torch.randn(7, 7, generator=g, dtype=dtype)
    for a in (torch.randn(7, 3, generator=g, dtype=dtype), torch.randn(3, 7, generator=g, dtype=dtype).t()):
        expected = m0 - 0.5 * a @ a.t()
        got = add_outer_lower_(m0.clone(), a, -0.5)  # in place, row-major m, row- or column-major a
        torch.testing.assert_close(torch.tril(got), torch.tril(expected))
        view = m0.clone().t()  # not contiguous: the full product is added
        torch.testing.assert_close(add_outer_lower_(view, a, -0.5), m0.t() - 0.5 * a @ a.t())


def test_gram_factor_is_exact_and_as_wide_as_the_rows():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 40, generator=g, dtype=torch.float64)  # 6 feature rows, d_in = 40: rank 6
    factor = gram_factor(x.t() @ x, 6)
    assert factor.shape == (40, 6)  # pivoted Cholesky: exact after as many steps as there are rows
    torch.testing.assert_close(factor @ factor.t(), x.t() @ x)
    full = gram_factor(x.t() @ x, 10**9)  # rows unknown: a full eigendecomposition, null space dropped
    assert full.shape == (40, 6)
    torch.testing.assert_close(full @ full.t(), x.t() @ x)
    low = torch.randn(6, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 40, generator=g, dtype=torch.float64)
    factor = gram_factor(low.t() @ low, 6)  # 6 rows of rank 2: the factorisation stops after 2 steps
    assert factor.shape == (40, 2)
    torch.testing.assert_close(factor @ factor.t(), low.t() @ low)
    assert gram_factor(torch.zeros(5, 5), 2).shape == (5, 0)


def _explicit_m(ws, xs, k, lam):
    return sum(ws[i] @ (xs[k].t() @ xs[k] - lam * xs[i].t() @ xs[i]) @ ws[i].t() for i in range(len(ws)) if i != k)


def test_cat_span_path_matches_the_explicit_eigenproblem():
    # d_out = 40 > joint width 2 · (2 + 2): the basis is found in the span of [Y_k, O_{-k}], never 40 × 40
    g = torch.Generator().manual_seed(2)
    ws = [torch.randn(40, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    xs = [torch.randn(2, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    factors = [gram_factor(x.t() @ x, 2) for x in xs]
    for k, (basis, values, drift) in enumerate(cat_bases(ws, factors, 3, 0.3, "top")):
        m = _explicit_m(ws, xs, k, 0.3)
        eig = torch.linalg.eigvalsh(m).flip(0)[:3]
        torch.testing.assert_close(values, eig[eig > 0])
        torch.testing.assert_close(basis.t() @ basis, torch.eye(basis.shape[1], dtype=basis.dtype))
        torch.testing.assert_close(basis.t() @ m @ basis, torch.diag(values))
        torch.testing.assert_close(drift, float(sum((ws[i] @ xs[k].t()).square().sum() for i in range(3) if i != k)))


@pytest.mark.parametrize("d_out", [6, 40])  # M_k formed, and the span path
def test_cat_bases_with_an_all_zero_gram(d_out):
    # a task whose layer input is all zero has an empty Gram factor: no drift of its own, no own term
    g = torch.Generator().manual_seed(7)
    ws = [torch.randn(d_out, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    xs = [torch.randn(2, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    xs[1] = torch.zeros(2, 8, dtype=torch.float64)
    factors = [gram_factor(x.t() @ x, 2) for x in xs]
    assert factors[1].shape == (8, 0)
    for k, (basis, values, drift) in enumerate(cat_bases(ws, factors, 2, 0.3, "top")):
        eig = torch.linalg.eigvalsh(_explicit_m(ws, xs, k, 0.3)).flip(0)[:2]
        torch.testing.assert_close(values, eig[eig > 1e-9])
        assert basis.shape == (d_out, len(values))
        torch.testing.assert_close(drift, float(sum((ws[i] @ xs[k].t()).square().sum() for i in range(3) if i != k)))


def test_cat_bottom_order_takes_the_smallest_eigenvalues():
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    xs = [torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    factors = [gram_factor(x.t() @ x, 4) for x in xs]
    basis, values, _ = cat_bases(ws, factors, 2, 2.0, "bottom")[1]
    torch.testing.assert_close(values, torch.linalg.eigvalsh(_explicit_m(ws, xs, 1, 2.0))[:2])
    assert basis.shape == (6, 2)


def test_cat_projections_apply_in_task_order():
    # the bases of different tasks are not orthogonal: (I − B2 B2ᵀ)(I − B1 B1ᵀ) W ≠ the joint projection
    g = torch.Generator().manual_seed(4)
    w = torch.randn(10, 7, generator=g, dtype=torch.float64)
    bases = [torch.linalg.qr(torch.randn(10, c, generator=g, dtype=torch.float64))[0] for c in (2, 3, 1)]
    expected = w
    for b in bases:
        expected = expected - b @ (b.t() @ expected)
    torch.testing.assert_close(project_out(w, bases, rescale=False), expected)
    joint = torch.linalg.qr(torch.cat(bases, dim=1))[0]
    assert (project_out(w, bases, rescale=False) - (w - joint @ (joint.t() @ w))).abs().max() > 1e-3
    rescaled = project_out(w, bases, rescale=True)
    torch.testing.assert_close(rescaled.norm(), w.norm())
    torch.testing.assert_close(rescaled / rescaled.norm(), expected / expected.norm())


def test_cat_trimmed_total_equals_the_sum_of_the_trimmed_vectors():
    g = torch.Generator().manual_seed(6)
    ws = [torch.randn(10, 7, generator=g, dtype=torch.float64) for _ in range(3)]
    bases = [torch.linalg.qr(torch.randn(10, c, generator=g, dtype=torch.float64))[0] for c in (2, 0, 3)]
    for rescale in (False, True):
        expected = sum(project_out(w, [b for k, b in enumerate(bases) if k != i], rescale) for i, w in enumerate(ws))
        torch.testing.assert_close(trimmed_total(ws, bases, rescale), expected)


def test_run_threaded_keeps_the_key_order_restores_threads_and_raises():
    threads = torch.get_num_threads()
    keys = [f"k{i}" for i in range(7)]
    out = run_threaded(lambda k: torch.full((2,), float(k[1:])), keys, {k: int(k[1:]) for k in keys}, 2, "test")
    assert list(out) == keys and [float(v[0]) for v in out.values()] == list(range(7))
    assert torch.get_num_threads() == threads

    def failing(key):
        if key == "k3":
            raise MergeflowError("unit k3 is broken")
        return torch.zeros(1)

    with pytest.raises(MergeflowError, match="unit k3 is broken"):
        run_threaded(failing, keys, {k: 1 for k in keys}, 2, "test")
    assert torch.get_num_threads() == threads


def test_cat_on_threads_matches_one_unit_at_a_time_and_repeats_exactly(setup):
    pre, experts, stats = setup
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # one thread: units one after another
        one_diag: dict = {}
        one = merge("cat", pre, experts, stats=stats, diagnostics=one_diag)
        torch.set_num_threads(2)  # two threads: two units side by side, each single-threaded
        runs = []
        for _ in range(2):
            diag: dict = {}
            runs.append((merge("cat", pre, experts, stats=stats, diagnostics=diag), diag))
    finally:
        torch.set_num_threads(threads)
    (two, two_diag), (again, again_diag) = runs
    for k in pre:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(two[k], again[k]), k  # each unit single-threaded: the same bytes every time
    assert list(two_diag["units"]) == list(one_diag["units"])  # parameter order, q/k/v within in_proj
    assert list(two_diag["ln_masked"]) == list(one_diag["ln_masked"])
    assert two_diag == again_diag


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


def _stats_for(grams=None, sqnorms=None, rows=10):
    st = TaskStats()
    for k, g in (grams or {}).items():
        st.gram[k], st.rows[k] = g, rows
    for k, e in (sqnorms or {}).items():
        st.sqnorm[k], st.rows[k] = e, rows
    return st


def test_cat_layernorm_masks_zero_exactly_the_chosen_entries():
    key, linear = "ln_post.weight", "transformer.resblocks.0.mlp.c_fc.weight"
    pre = {key: torch.ones(4), linear: torch.zeros(2, 4)}  # the linear unit does not move
    experts = {t: {key: torch.full((4,), 2.0), linear: torch.zeros(2, 4)} for t in ("t0", "t1")}  # T0 = T1 = 1
    # energies (sqnorm / rows): e0 = [5, 1, 1, 1], e1 = [1, 1, 1, 6]; with λ_ln = 1:
    # s_0 = T1² (e0 − e1) = [4, 0, 0, −5] → task 0 protects entry 0; s_1 = [−4, 0, 0, 5] → task 1 protects 3
    stats = {t: _stats_for(grams={linear: torch.eye(4)}, sqnorms={key: torch.tensor(e)})
             for t, e in (("t0", [50.0, 10, 10, 10]), ("t1", [10.0, 10, 10, 60]))}
    diag = {}
    out = merge("cat", pre, experts, stats=stats, diagnostics=diag, alpha=1.0, c_ln=1, lambda_ln=1.0)
    torch.testing.assert_close(out[key] - pre[key], torch.tensor([1.0, 2.0, 2.0, 1.0]))
    assert diag["ln_masked"][key] == [1, 1]
    out = merge("cat", pre, experts, stats=stats, alpha=1.0, c_ln=1, lambda_ln=10.0)  # no positive score
    torch.testing.assert_close(out[key] - pre[key], torch.full((4,), 2.0))


def test_cat_split_qkv_trims_the_three_blocks_independently():
    key = "transformer.resblocks.0.attn.in_proj_weight"
    g = torch.Generator().manual_seed(5)
    d = 6
    pre = {key: torch.randn(3 * d, d, generator=g)}
    experts = {f"t{i}": {key: pre[key] + 0.1 * torch.randn(3 * d, d, generator=g)} for i in range(3)}
    stats = {t: _stats_for(grams={key: (lambda x: x.t() @ x)(torch.randn(3, d, generator=g))}, rows=3)
             for t in experts}
    changed = {t: {key: sd[key].clone()} for t, sd in experts.items()}
    changed["t1"][key][d:2 * d] += torch.randn(d, d, generator=g)  # only task 1's k block moves
    for split, same in ((True, True), (False, False)):
        a = merge("cat", pre, experts, stats=stats, alpha=1.0, c=2, split_qkv=split)[key]
        b = merge("cat", pre, changed, stats=stats, alpha=1.0, c=2, split_qkv=split)[key]
        q_block_equal = torch.allclose(a[:d], b[:d], atol=1e-6)
        v_block_equal = torch.allclose(a[2 * d:], b[2 * d:], atol=1e-6)
        assert q_block_equal is same and v_block_equal is same, split


def _pcb_reference(tau: list[list[float]], ratio: float) -> list[float]:
    """algorithms.md's PCB, written out with Python lists."""
    n, d = len(tau), len(tau[0])
    clamped = []
    for row in tau:
        mags = sorted(abs(x) for x in row)
        lo, hi = mags[int(0.0001 * d)], mags[max(int(0.9999 * d) - 1, 0)]
        clamped.append([min(max(abs(x), lo), hi) for x in row])
    scores = []
    for t in range(n):
        lo, hi = min(clamped[t]), max(clamped[t])
        intra = [math.exp(n * ((m - lo) / max(hi - lo, 1e-12)) ** 2) for m in clamped[t]]
        inter = [math.tanh(tau[t][j] * sum(tau[s][j] for s in range(n))) for j in range(d)]
        score = [a * b for a, b in zip(intra, inter, strict=True)]
        floor = sorted(score)[min(int((1 - ratio) * d), d - 1)]
        score = [max(x, floor) for x in score]
        lo, hi = min(score), max(score)
        scores.append([(x - lo) / max(hi - lo, 1e-12) for x in score])
    out = []
    for j in range(d):
        num = sum(scores[t][j] * math.copysign(clamped[t][j], tau[t][j]) * (tau[t][j] != 0) for t in range(n))
        out.append(num / max(sum(scores[t][j] for t in range(n)), 1e-12))
    return out


def test_pcb_matches_the_written_out_definition():
    tau = torch.tensor([[0.5, -1.0, 2.0, 0.1, -0.3, 1.5], [0.4, 1.0, -0.5, 0.2, -0.6, 1.0],
                        [-0.2, -0.8, 1.0, 0.0, -0.1, 0.7]])
    expected = torch.tensor(_pcb_reference(tau.tolist(), 0.5))
    torch.testing.assert_close(pcb_vector(tau, 0.5), expected)
    torch.testing.assert_close(pcb_vector(tau, 0.5, chunk=4), expected)  # chunked = whole
    # the two largest |τ| of each task are clamped to the second largest (0.9999·d − 1 = 4 → 5th smallest)
    assert float(pcb_vector(tau[:1], 1.0)[2]) == 1.5


def test_tsv_on_orthogonal_singular_vectors_keeps_each_tasks_top_triplet():
    key = "w"
    pre = {key: torch.zeros(2, 2), "b": torch.zeros(2)}
    experts = {"t0": {key: torch.tensor([[3.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([1.0, 0.0])},
               "t1": {key: torch.tensor([[0.0, 0.0], [0.0, 2.0]]), "b": torch.tensor([0.0, 3.0])}}
    out = merge("tsv", pre, experts, alpha=1.0)
    # r = 2 // 2 = 1 triplet per task: (e1, 3, e1) and (e2, 2, e2); already orthogonal → diag(3, 2)
    torch.testing.assert_close(out[key], torch.tensor([[3.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(out["b"], torch.tensor([0.5, 1.5]))  # 1-D: the mean task vector


def test_iso_c_hand_example():
    pre = {"w": torch.zeros(2, 2)}
    experts = {"t0": {"w": torch.tensor([[3.0, 0.0], [0.0, 0.0]])}, "t1": {"w": torch.tensor([[0.0, 0.0], [0.0, 1.0]])}}
    out = merge("iso_c", pre, experts, alpha=1.0)
    torch.testing.assert_close(out["w"], torch.tensor([[2.0, 0.0], [0.0, 2.0]]))  # σ (3, 1) → mean 2


@pytest.mark.parametrize("kind", ["normal", "magnitudes", "signed zeros", "ties", "tiny", "huge"])
def test_kth_smallest_by_histogram_is_kthvalue(kind):
    """Past the size where the histogram pass takes over, every order statistic is torch.kthvalue's value:
    negative and positive values, both zeros, heavy ties, subnormal and huge magnitudes."""
    from mergeflow.merge.common import _SELECT_BY_HISTOGRAM, kth_smallest

    n = _SELECT_BY_HISTOGRAM + 4099
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    x = {"normal": x, "magnitudes": x.abs(), "ties": torch.round(x * 3) / 3, "tiny": x * 1e-40,
         "huge": torch.exp(x * 20), "signed zeros": x.index_fill(0, torch.arange(0, n, 3), 0.0)
         .index_fill(0, torch.arange(1, n, 7), -0.0)}[kind]
    for k in [1, 2, 4099, n // 3, n // 2, n - 1, n]:
        assert float(kth_smallest(x, k)) == float(torch.kthvalue(x, k).values), k
