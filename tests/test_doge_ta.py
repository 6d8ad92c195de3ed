"""DOGE-TA (algorithms.md §7.4): the projected gradient, the loss, and normalised task arithmetic at 0 steps."""

import torch

from conftest import perturbed
from mergeflow.merge import merge
from mergeflow.merge.doge_ta import doge_unit, shared_basis


def _ws(k=3, shape=(12, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(k)]


def test_every_projected_gradient_is_outside_the_shared_subspace():
    ws = _ws()
    gradients = []
    doge_unit(ws, eta=0.5, subspace=3, steps=5, lr=1e-2, gradients=gradients)
    q = shared_basis(ws, 3)
    assert q.shape == (12, 3)  # r = 9, 9 // 3 directions
    for g in gradients:
        assert torch.allclose(q.t() @ g, torch.zeros(3, 9, dtype=torch.float64), atol=1e-10)
    inside = []
    doge_unit(ws, eta=0.5, subspace=3, steps=3, lr=1e-2, projection="within", gradients=inside)
    for g in inside:  # the other reading: the gradient kept inside
        assert torch.allclose(q @ (q.t() @ g), g, atol=1e-10)


def test_the_loss_decreases():
    for inner in ("row", "tensor"):
        losses = []
        doge_unit(_ws(seed=1), eta=0.5, subspace=3, steps=60, lr=1e-2, inner=inner, losses=losses)
        assert losses[-1] < 0.95 * losses[0] and losses[1] < losses[0], inner


def test_zero_steps_without_trim_is_normalised_task_arithmetic(micro_state):
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(3)}
    out = merge("doge_ta", micro_state, experts, eta=0.1, steps=0, density=1.0, split_qkv=False)
    key = "transformer.resblocks.0.mlp.c_proj.weight"
    vectors = [experts[t][key] - micro_state[key] for t in experts]
    expected = micro_state[key] + 0.1 * sum(v / v.norm() for v in vectors)
    assert torch.allclose(out[key], expected, atol=1e-6)
    for other in ("proj", "conv1.weight", "transformer.resblocks.0.mlp.c_proj.bias", "ln_pre.weight"):
        assert torch.equal(out[other], micro_state[other]), other


def test_the_trim_keeps_the_density_of_each_task_vector(micro_state):
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(2)}
    out = merge("doge_ta", micro_state, {"t0": experts["t0"]}, eta=1.0, steps=0, density=0.3)
    keys = [k for k in micro_state if k.endswith(("in_proj_weight", "out_proj.weight", "c_fc.weight",
                                                  "c_proj.weight"))]
    changed = sum(int((out[k] != micro_state[k]).sum()) for k in keys)
    total = sum(micro_state[k].numel() for k in keys)
    assert abs(changed / total - 0.3) < 0.01
    full = merge("doge_ta", micro_state, experts, steps=3)  # the defaults run
    assert all(torch.isfinite(v).all() for v in full.values())


def _reference_unit(ws, eta, subspace, steps, lr, inner):
    """algorithms.md §7.4 as written: full SVDs for the shared basis, the loss differentiated by autograd, torch's
    default Adam."""
    lam = [eta / float(w.norm()) for w in ws]
    total, s = sum(lam), sum(w * x for w, x in zip(ws, lam, strict=True))
    r, per = min(ws[0].shape), min(ws[0].shape) // len(ws)
    m = torch.zeros(ws[0].shape[0], r, dtype=ws[0].dtype)
    for i, w in enumerate(ws):
        m[:, i * per:(i + 1) * per] = torch.linalg.svd(w, full_matrices=False)[0][:, :per]
    q = torch.linalg.svd(m, full_matrices=False)[0][:, :r // subspace]
    delta = torch.nn.Parameter(torch.zeros_like(ws[0]))
    opt = torch.optim.Adam([delta], lr=lr, foreach=False)
    for _ in range(steps):
        opt.zero_grad()
        dims = 1 if inner == "row" else (0, 1)
        loss = sum((w * (w - s - total * delta)).sum(dims).pow(2).sum() for w in ws)
        loss.backward()
        delta.grad -= q @ (q.t() @ delta.grad)
        opt.step()
    return delta.detach()


def test_the_batched_steps_equal_the_loss_differentiated_as_written():
    for inner in ("row", "tensor"):
        ws = [w * 1e-2 for w in _ws(k=4, shape=(20, 14), seed=3)]
        fast, _ = doge_unit(ws, eta=0.3, subspace=2, steps=30, lr=1e-3, inner=inner)
        slow = _reference_unit(ws, 0.3, 2, 30, 1e-3, inner)
        assert torch.allclose(fast, slow, rtol=0, atol=1e-10 * float(slow.abs().max())), inner
