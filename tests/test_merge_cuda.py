"""Every merge method gives the same model on CUDA as on CPU (skipped where no GPU is present).

The merge stage runs on the GPU when there is one, so the GPU paths (LAPACK vs cuSOLVER eigensolvers,
device-placed generators, masks built on the inputs' device) must agree with the CPU ones that the other
tests check against closed forms.
"""

import pytest
import torch

from conftest import perturbed
from mergeflow.merge import METHODS, merge
from test_merge import _gram_stats

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("name", list(METHODS))
def test_cuda_merge_equals_cpu_merge(micro_state, name):
    experts = {f"t{i}": perturbed(micro_state, i) for i in range(3)}
    stats = {t: _gram_stats(micro_state, seed=i) for i, t in enumerate(experts)}
    hp = {METHODS[name].scale: 0.5} if METHODS[name].scale else {}
    on_cpu = merge(name, micro_state, experts, stats=stats, **hp)
    on_gpu = merge(name, {k: v.cuda() for k, v in micro_state.items()},
                   {t: {k: v.cuda() for k, v in sd.items()} for t, sd in experts.items()},
                   stats={t: s.to("cuda") for t, s in stats.items()}, **hp)
    # float32 on different BLAS and solvers: agreement to a small fraction of the parameter's scale; LOT solves
    # a linear system in float32 (its pseudo-inverse amplifies round-off by the Grams' condition, ~1e3 here:
    # 1.5e-4 was seen on an H100)
    tol = 1e-3 if name == "lot" else 1e-4
    for k, v in on_cpu.items():
        assert on_gpu[k].device.type == "cuda", k
        torch.testing.assert_close(on_gpu[k].cpu(), v, rtol=tol, atol=tol * max(float(v.abs().max()), 1.0))
