"""CART (algorithms.md §7.3) against an independent float64 re-implementation and its identities."""

import numpy as np
import torch

from conftest import perturbed
from mergeflow.merge import merge

LINEAR = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _experts(state, k=3):
    return {f"t{i}": perturbed(state, i, scale=0.05) for i in range(k)}


def _reference(pre, experts, ratio, lam):
    """The spec's four lines, in NumPy float64, unit by unit."""
    out = {}
    for key, base in pre.items():
        t = [experts[e][key].double().numpy() - base.double().numpy() for e in experts]
        mean = sum(t) / len(t)
        if key.endswith(LINEAR):
            q = max(1, int(np.floor(ratio * min(mean.shape))))
            total = 0.0
            for v in t:
                u, s, vh = np.linalg.svd(v - mean, full_matrices=False)
                total = total + (u[:, :q] * s[:q]) @ vh[:q]
            delta = mean + lam * total
        else:
            delta = mean
        out[key] = base.double().numpy() + delta
    return out


def test_cart_equals_an_independent_reimplementation(micro_state):
    pre = {k: v.double() for k, v in micro_state.items()}
    experts = {t: {k: v.double() for k, v in sd.items()} for t, sd in _experts(micro_state).items()}
    out = merge("cart", pre, experts, **{"lambda": 2.0, "rank_ratio": 0.12})
    ref = _reference(pre, experts, 0.12, 2.0)
    for key in pre:
        assert np.allclose(out[key].numpy(), ref[key], rtol=0, atol=1e-10), key


def test_cart_identities(micro_state):
    experts = _experts(micro_state)
    average = merge("weight_averaging", micro_state, experts)
    for hp in ({"lambda": 0.0, "rank_ratio": 0.12}, {"lambda": 2.0, "rank_ratio": 1.0}):
        out = merge("cart", micro_state, experts, **hp)
        for key in micro_state:
            assert torch.allclose(out[key], average[key], atol=1e-5), (hp, key)
    one = merge("cart", micro_state, {"t0": experts["t0"]}, **{"lambda": 2.0, "rank_ratio": 0.12})
    for key in micro_state:
        assert torch.allclose(one[key], experts["t0"][key], atol=1e-6), key
    low = merge("cart", micro_state, experts, **{"lambda": 2.0, "rank_ratio": 0.12})
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    assert not torch.allclose(low[key], average[key], atol=1e-4)  # the low-rank residuals do not cancel
