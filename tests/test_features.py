"""Hook statistics against a manual forward pass; exemplars; determinism; bad input of the features stage."""

import math

import pytest
import torch
import torch.nn.functional as F

from mergeflow.errors import MergeflowError
from mergeflow.features import TaskStats
from mergeflow.features.collect import collect_stats
from mergeflow.features.exemplars import sample_exemplars


def _sqnorm(x, eps):
    x = x.reshape(-1, x.shape[-1]).double()
    xhat = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    return (xhat ** 2).sum(0)


def _gram(x):
    x = x.reshape(-1, x.shape[-1]).double()
    return x.t() @ x


def manual_statistics(visual, x):
    """Every statistic of algorithms.md §1, from a forward pass written out by hand (float64)."""
    v = visual.double()
    x = x.double()
    gram, sqnorm = {}, {}
    patches = F.unfold(x, kernel_size=v.conv1.kernel_size, stride=v.conv1.stride).transpose(1, 2)
    gram["conv1.weight"] = _gram(patches)
    h = (patches @ v.conv1.weight.reshape(v.conv1.weight.shape[0], -1).t())  # conv1 as a matrix product
    h = torch.cat([v.class_embedding.expand(h.shape[0], 1, -1), h], dim=1) + v.positional_embedding
    sqnorm["ln_pre.weight"] = _sqnorm(h, v.ln_pre.eps)
    h = v.ln_pre(h)
    for i, block in enumerate(v.transformer.resblocks):
        p = f"transformer.resblocks.{i}"
        a = block.ln_1(h)
        sqnorm[f"{p}.ln_1.weight"] = _sqnorm(h, block.ln_1.eps)
        gram[f"{p}.attn.in_proj_weight"] = _gram(a)
        attn = block.attn
        b, n, w = a.shape
        heads, d = attn.num_heads, w // attn.num_heads
        q, k, val = (a @ attn.in_proj_weight.t() + attn.in_proj_bias).chunk(3, dim=-1)
        q, k, val = (t.reshape(b, n, heads, d).transpose(1, 2) for t in (q, k, val))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        context = (weights @ val).transpose(1, 2).reshape(b, n, w)
        gram[f"{p}.attn.out_proj.weight"] = _gram(context)
        h = h + block.ls_1(context @ attn.out_proj.weight.t() + attn.out_proj.bias)
        m = block.ln_2(h)
        sqnorm[f"{p}.ln_2.weight"] = _sqnorm(h, block.ln_2.eps)
        gram[f"{p}.mlp.c_fc.weight"] = _gram(m)
        g = block.mlp.gelu(block.mlp.c_fc(m))
        gram[f"{p}.mlp.c_proj.weight"] = _gram(g)
        h = h + block.ls_2(block.mlp.c_proj(g))
    sqnorm["ln_post.weight"] = _sqnorm(h, v.ln_post.eps)
    pooled = v.ln_post(h)[:, 0]
    gram["proj"] = _gram(pooled)
    return gram, sqnorm, pooled @ v.proj


@pytest.fixture()
def images():
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_hook_statistics_match_manual_forward(micro_visual, images):
    import copy

    visual = copy.deepcopy(micro_visual)
    stats = collect_stats(copy.deepcopy(visual), [images[:2], images[2:]], dtype=torch.float64)
    gram, sqnorm, out = manual_statistics(copy.deepcopy(visual), images)
    with torch.no_grad():
        assert torch.allclose(out, visual.double()(images.double()), atol=1e-10)  # the manual pass is the model
    assert set(stats.gram) == set(gram)
    assert set(stats.sqnorm) == set(sqnorm)
    kinds = {"in_proj_weight", "out_proj.weight", "c_fc.weight", "c_proj.weight", "conv1.weight", "proj"}
    assert {next(k for k in kinds if key.endswith(k)) for key in gram} == kinds
    for key, expected in gram.items():
        rel = (stats.gram[key] - expected).norm() / expected.norm()
        assert rel < 1e-5, (key, float(rel))
    for key, expected in sqnorm.items():
        rel = (stats.sqnorm[key] - expected).norm() / expected.norm()
        assert rel < 1e-5, (key, float(rel))
    tokens = images.shape[0] * ((16 // 4) ** 2 + 1)
    assert stats.rows["transformer.resblocks.0.attn.in_proj_weight"] == tokens
    assert stats.rows["conv1.weight"] == images.shape[0] * 16 and stats.rows["proj"] == images.shape[0]


def test_float32_accumulation_is_close(micro_visual, images):
    s32 = collect_stats(micro_visual, images, dtype=torch.float32)
    s64 = collect_stats(micro_visual, images, dtype=torch.float64)
    for key in s64.gram:
        assert s32.gram[key].dtype == torch.float32
        assert torch.allclose(s32.gram[key].double(), s64.gram[key], rtol=1e-4, atol=1e-4)


def test_statistics_are_bit_identical_for_the_same_input(micro_visual, images):
    a, b = collect_stats(micro_visual, images), collect_stats(micro_visual, images)
    assert all(torch.equal(a.gram[k], b.gram[k]) for k in a.gram)
    assert all(torch.equal(a.sqnorm[k], b.sqnorm[k]) for k in a.sqnorm)


def test_exemplars_are_seeded_and_nested():
    assert sample_exemplars(100, 10, 3) == sample_exemplars(100, 10, 3)
    assert sample_exemplars(100, 10, 3) != sample_exemplars(100, 10, 4)
    assert sample_exemplars(100, 20, 3)[:10] == sample_exemplars(100, 10, 3)


def test_more_exemplars_than_the_split_has():
    with pytest.raises(MergeflowError, match="300 exemplars asked but the train split has only 100 samples"):
        sample_exemplars(100, 300, 0)


def test_task_stats_round_trip_and_bad_tensor():
    st = TaskStats(gram={"a.weight": torch.eye(2)}, rows={"a.weight": 7}, sqnorm={"ln.weight": torch.ones(3)})
    back = TaskStats.from_tensors(st.to_tensors())
    assert back.rows == {"a.weight": 7} and torch.equal(back.gram["a.weight"], torch.eye(2))
    with pytest.raises(MergeflowError, match="unexpected tensor 'bogus/x'"):
        TaskStats.from_tensors({"bogus/x": torch.zeros(1)}, "f.safetensors")


def test_task_stats_to_moves_every_tensor_and_keeps_rows():
    st = TaskStats(gram={"w": torch.eye(2)}, sqnorm={"ln": torch.ones(2)}, rows={"w": 5, "ln": 5},
                   fisher={"w": torch.ones(2, 2)}, grad={"w": torch.zeros(2, 2)})
    moved = st.to("meta")
    fields = ("gram", "sqnorm", "fisher", "grad")
    assert all(v.device.type == "meta" for f in fields for v in getattr(moved, f).values())
    assert moved.rows == {"w": 5, "ln": 5} and moved.kinds() == st.kinds()
    assert st.gram["w"].device.type == "cpu"  # a copy: the original stays where it was


def test_unknown_variant_is_refused():
    from mergeflow.config import Variant

    with pytest.raises(MergeflowError, match="variant"):
        Variant.parse("gram-fast")
    with pytest.raises(MergeflowError, match="variant"):
        Variant.parse("hessian-a1.0-n2-s0")
