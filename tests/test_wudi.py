"""WUDI-Merging (algorithms.md §7.2): its closed-form gradient and its identities."""

import torch

from conftest import perturbed
from mergeflow.merge import merge
from mergeflow.merge.wudi import wudi_terms, wudi_unit

UNIT = "transformer.resblocks.0.mlp.c_fc.weight"


def _vectors(k=3, shape=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(k)]


def test_the_closed_form_gradient_is_autograds():
    vectors = _vectors()
    a, b, weights = wudi_terms(vectors)
    tau = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    loss = sum(w * ((tau - t) @ t.t()).pow(2).sum() for w, t in zip(weights, vectors, strict=True))
    loss.backward()
    assert torch.allclose(tau.grad, 2 * (tau.detach() @ a - b), rtol=1e-12)
    assert weights[0] == 1 / float(vectors[0].pow(2).sum())


def test_the_loss_never_increases_over_the_first_steps():
    losses = []
    wudi_unit(_vectors(seed=1), steps=50, lr=1e-3, losses=losses)
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < losses[0]


def test_one_task_never_moves_and_zero_steps_is_task_arithmetic(micro_state):
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(3)}
    # the initial gradient is zero: in float64 the first steps move nothing but round-off (Adam amplifies
    # that round-off step after step, since it normalises the gradient: 2e-7 after 20 steps, in float32 more)
    pre64 = {k: v.double() for k, v in micro_state.items()}
    one = merge("wudi", pre64, {"t0": {k: v.double() for k, v in experts["t0"].items()}}, steps=2)
    assert torch.allclose(one[UNIT], experts["t0"][UNIT].double(), atol=1e-12)
    one = merge("wudi", micro_state, {"t0": experts["t0"]}, steps=20)
    bias = "transformer.resblocks.0.mlp.c_fc.bias"
    assert torch.equal(one[bias], micro_state[bias])  # the official routing: no task vector outside the units
    zero = merge("wudi", micro_state, experts, steps=0)
    ta = merge("task_arithmetic", micro_state, experts, alpha=1.0)
    assert torch.allclose(zero[UNIT], ta[UNIT], atol=1e-6) and torch.equal(zero[bias], micro_state[bias])
    assert torch.equal(zero["proj"], micro_state["proj"]) and torch.equal(zero["conv1.weight"],
                                                                          micro_state["conv1.weight"])


def test_the_options_route_every_2d_tensor_and_the_mean(micro_state):
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(2)}
    out = merge("wudi", micro_state, experts, steps=5, units="all2d", others="mean", lr=1e-4)
    mean = sum(experts[t]["ln_pre.bias"] - micro_state["ln_pre.bias"] for t in experts) / 2
    assert torch.allclose(out["ln_pre.bias"], micro_state["ln_pre.bias"] + mean, atol=1e-6)
    ta = merge("task_arithmetic", micro_state, experts, alpha=1.0)
    assert not torch.allclose(out["proj"], micro_state["proj"]) and not torch.allclose(out["proj"], ta["proj"])
    split = merge("wudi", micro_state, experts, steps=5, split_qkv=True, lr=1e-4)
    whole = merge("wudi", micro_state, experts, steps=5, lr=1e-4)
    key = "transformer.resblocks.0.attn.in_proj_weight"
    assert not torch.allclose(split[key], whole[key])
