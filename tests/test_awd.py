"""AWD (algorithms.md §7.5): property tests only (there is no reference implementation)."""

import torch

from conftest import perturbed
from mergeflow.merge import merge
from mergeflow.merge.awd import awd_loss, redundant_vector


def _tau(k=4, n=300, seed=0, shared=2.0):
    """Task vectors with a common component, so that they are far from orthogonal."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, generator=g, dtype=torch.float64)
    return torch.stack([shared * common + torch.randn(n, generator=g, dtype=torch.float64) for _ in range(k)])


def _mean_cos(tau, delta):
    v = tau - delta
    v = v / v.norm(dim=1, keepdim=True)
    c = v @ v.t()
    k = len(tau)
    return float((c.abs().sum() - k) / (k * (k - 1)))


def test_the_run_makes_the_vectors_more_orthogonal_and_the_loss_never_rises():
    tau = 0.01 * _tau()  # norms of a few tenths, like fine-tuning's task vectors: the cosines' gradient matters
    delta = redundant_vector(tau, reg=0.1, lr=0.01, steps=300)
    assert _mean_cos(tau, delta) < 0.5 * _mean_cos(tau, torch.zeros(300, dtype=torch.float64))
    losses = []
    redundant_vector(tau, reg=0.1, lr=1e-4, steps=100, losses=losses)  # a small step: no overshoot
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < losses[0]


def test_the_closed_form_gradient_is_autograds():
    tau = _tau(k=3, n=50, seed=1)
    delta = (0.1 * torch.randn(50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).requires_grad_()
    v = tau - delta
    c = (v @ v.t()) / (v.norm(dim=1)[:, None] * v.norm(dim=1)[None, :])
    off = ~torch.eye(3, dtype=torch.bool)
    loss = c.abs()[off].sum() / 6 + 0.1 * delta.norm()
    loss.backward()
    stepped = redundant_vector(tau, reg=0.1, lr=1.0, steps=1, init="zero")  # from 0: the norm term is 0 there
    v0 = tau
    c0 = (v0 @ v0.t()) / (v0.norm(dim=1)[:, None] * v0.norm(dim=1)[None, :])
    assert abs(awd_loss(tau @ tau.t(), 0.1, 0.0)[0] - float(c0.abs()[off].sum() / 6)) < 1e-12
    zero = torch.zeros(50, dtype=torch.float64, requires_grad=True)
    w = tau - zero
    cz = (w @ w.t()) / (w.norm(dim=1)[:, None] * w.norm(dim=1)[None, :])
    (cz.abs()[off].sum() / 6).backward()
    assert torch.allclose(stepped, -zero.grad, atol=1e-12)  # one step of size 1 from 0 is −∇L(0)


def test_steps_zero_and_a_huge_penalty_are_task_arithmetic(micro_state):
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(3)}
    ta = merge("task_arithmetic", micro_state, experts, alpha=0.3)
    for hp in ({"steps": 0}, {"reg": 1e9, "lr": 1e-12, "steps": 5}):
        out = merge("awd", micro_state, experts, alpha=0.3, **hp)
        for key in micro_state:
            assert torch.allclose(out[key], ta[key], atol=1e-6), (hp, key)
    moved = merge("awd", micro_state, experts, alpha=0.3, steps=50)
    assert any(not torch.allclose(moved[k], ta[k], atol=1e-6) for k in micro_state)
    per_tensor = merge("awd", micro_state, experts, alpha=0.3, steps=5, scope="tensor", base="ties",
                       keep_redundant=True)
    assert set(per_tensor) == set(micro_state)


def test_the_coefficient_steps_equal_gradient_descent_on_the_model_sized_vector():
    """δ carried as K coefficients of the task vectors = plain gradient descent on L(δ) over all N entries, with
    autograd's gradient (small steps: the cosines stay away from 0, where |c| has its kink and round-off is
    amplified)."""
    tau = 0.01 * _tau(k=4, n=80, seed=3)
    off = ~torch.eye(4, dtype=torch.bool)
    for init in ("zero", "mean"):
        delta = tau.mean(0).clone() if init == "mean" else torch.zeros(80, dtype=torch.float64)
        for _ in range(25):
            d = delta.clone().requires_grad_()
            v = tau - d
            c = (v @ v.t()) / (v.norm(dim=1)[:, None] * v.norm(dim=1)[None, :])
            penalty = d.norm() if float(d.detach().norm()) > 0 else d.sum() * 0  # ‖δ‖ has no gradient at 0
            loss = c.abs()[off].sum() / 12 + 0.1 * penalty
            loss.backward()
            delta = delta - 1e-3 * d.grad
        fast = redundant_vector(tau, reg=0.1, lr=1e-3, steps=25, init=init)
        assert torch.allclose(fast, delta, rtol=0, atol=1e-12 * float(delta.abs().max())), init
