"""The training-based and task-aware methods on tiny linear "encoders", against hand-computed values."""

import pytest
import torch

from mergeflow.errors import MergeflowError
from mergeflow.merge import METHODS, TaskData, merge
from mergeflow.merge.adamerging import combine, entropy
from mergeflow.merge.emr import elect
from mergeflow.merge.surgery import fit_adapter
from mergeflow.merge.tall import masks_at, tall_mask
from mergeflow.merge.task_aware import AdaptedModel, MaskedTaskModels, from_tensors, pack_bits, unpack_bits

TASKS = ("a", "b", "c")


def _encode(weights, images):
    return images.float() @ weights["w"].t() + weights["b"]


def _models(seed=0, d_in=6, d_out=4):
    g = torch.Generator().manual_seed(seed)
    pre = {"w": torch.randn(d_out, d_in, generator=g), "b": torch.randn(d_out, generator=g)}
    experts = {t: {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in pre.items()} for t in TASKS}
    return pre, experts


def _data(val_accuracy=None, merged=None, n=40, d_in=6, d_out=4):
    g = torch.Generator().manual_seed(1)
    heads = {t: torch.randn(3, d_out, generator=g) for t in TASKS}
    unlabeled = {t: torch.randn(n, d_in, generator=g) for t in TASKS}
    return TaskData(_encode, heads, 10.0, unlabeled, "test", val_accuracy, merged or {})


# --- AdaMerging ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_adamerging_with_zero_steps_is_task_arithmetic_at_its_init(granularity):
    pre, experts = _models()
    got = merge("adamerging", pre, experts, data=_data(), granularity=granularity, init=0.4, steps=0)
    want = merge("task_arithmetic", pre, experts, alpha=0.4)
    for k in pre:
        torch.testing.assert_close(got[k], want[k])


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_adamerging_lowers_the_entropy_and_trains_only_its_coefficients(granularity):
    pre, experts = _models()
    seen = []

    def encode(weights, images):
        seen.append(all(w.grad_fn is not None for w in weights.values()))
        return _encode(weights, images)

    data = _data()
    data.encode = encode
    diag = {}
    merge("adamerging", pre, experts, data=data, diagnostics=diag, granularity=granularity, steps=60, lr=0.05,
          batch_size=8)
    assert diag["loss"]["last"] < diag["loss"]["first"]
    assert all(seen)  # every weight the encoder saw came out of the merge (depends on Λ)
    assert all(v.grad is None and not v.requires_grad for sd in (pre, *experts.values()) for v in sd.values())


def test_adamerging_clamps_its_coefficients_to_0_1():
    pre, experts = _models()
    stacked = {k: torch.stack([experts[t][k] - pre[k] for t in TASKS]) for k in pre}
    wild = torch.tensor([[-2.0, 0.5, 7.0]])
    got = combine(pre, stacked, wild)
    want = combine(pre, stacked, torch.tensor([[0.0, 0.5, 1.0]]))
    for k in pre:
        torch.testing.assert_close(got[k], want[k])
    x = torch.zeros(2, 3, requires_grad=True)
    assert torch.isclose(entropy(x), torch.log(torch.tensor(3.0)))


def test_adamerging_plus_plus_trims_the_task_vectors_first():
    pre, experts = _models()
    plain = merge("adamerging", pre, experts, data=_data(), steps=0, init=1.0)
    trimmed = merge("adamerging", pre, experts, data=_data(), steps=0, init=1.0, trim="ties", density=0.2)
    delta = torch.cat([(trimmed[k] - pre[k]).flatten() for k in pre])
    assert (delta != 0).sum() <= 0.2 * delta.numel() * len(TASKS) + len(TASKS)
    assert not torch.allclose(plain["w"], trimmed["w"])


def test_adamerging_without_images_is_refused():
    pre, experts = _models()
    with pytest.raises(MergeflowError, match="pass data=TaskData"):
        merge("adamerging", pre, experts)
    with pytest.raises(MergeflowError, match="needs unlabeled images"):
        merge("adamerging", pre, experts, data=TaskData(_encode, {}, 1.0))


# --- Surgery -------------------------------------------------------------------------------------------
def test_surgery_with_zero_steps_is_its_base_model():
    pre, experts = _models()
    base = merge("task_arithmetic", pre, experts, alpha=0.3)
    result = merge("surgery", pre, experts, data=_data(merged={"task_arithmetic": base}), steps=0)
    assert isinstance(result, AdaptedModel)
    z = torch.randn(5, 4)
    for t in TASKS:
        torch.testing.assert_close(result.adapter(t)(z), z)
        assert all(torch.equal(result.state(pre, t)[k], base[k]) for k in pre)


def test_surgery_adapters_learn_toward_the_expert_features():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(64, 8, generator=g)
    target = source + 0.5 * torch.relu(source @ torch.randn(8, 8, generator=g))
    _, losses = fit_adapter(source, target, rank=4, lr=1e-2, steps=200, batch_size=16, generator=g)
    assert losses[-1] < 0.7 * losses[0]


def test_surgery_needs_its_base_run():
    pre, experts = _models()
    with pytest.raises(MergeflowError, match="merged model of run 'task_arithmetic'"):
        merge("surgery", pre, experts, data=_data())


# --- TALL masks, Consensus, EMR -------------------------------------------------------------------------
def test_tall_mask_by_hand():
    own = torch.tensor([1.0, 0.1, -1.0])
    total = torch.tensor([1.1, 1.1, 0.0])
    # |T_MTL − T_t| = [0.1, 1.0, 1.0]; at λ 0.5: 1 > 0.05, 0.1 > 0.5 no, 1 > 0.5
    assert tall_mask(own, total, 0.5).tolist() == [True, False, True]
    assert tall_mask(own, total, 1.5).tolist() == [True, False, False]


def _tall_setup():
    pre = {"w": torch.zeros(2, 3)}
    experts = {"a": {"w": torch.tensor([[1.0, 0.1, -1.0], [0.5, -0.2, 0.3]])},
               "b": {"w": torch.tensor([[0.1, 1.0, 1.0], [0.4, 0.3, -0.6]])},
               "c": {"w": torch.tensor([[-0.3, 0.2, 0.1], [0.2, 0.2, 0.2]])}}
    vectors = {t: {"w": sd["w"]} for t, sd in experts.items()}
    total = {"w": sum(sd["w"] for sd in experts.values())}
    return pre, experts, vectors, total


def test_tall_masks_choose_each_lambda_on_validation():
    pre, experts, vectors, total = _tall_setup()
    want = {"a": 0.2, "b": 0.6, "c": 0.4}
    target = masks_at(vectors, total, want)

    def val_accuracy(weights, task):  # best when the model is θ_pre + m_t(want) ⊙ T_MTL
        return -float((weights["w"] - total["w"] * target[task]["w"]).abs().sum())

    diag = {}
    result = merge("tall_masks", pre, experts, data=TaskData(_encode, {}, 1.0, val_accuracy=val_accuracy),
                   diagnostics=diag, lambdas=[0.2, 0.4, 0.6])
    assert isinstance(result, MaskedTaskModels)
    for t in experts:
        assert torch.equal(result.masks[t]["w"], target[t]["w"])
        torch.testing.assert_close(result.state(pre, t)["w"], total["w"] * target[t]["w"])
    assert set(diag["lambdas"]) == set(experts)


def test_consensus_keeps_entries_that_k_masks_share():
    pre, experts, vectors, total = _tall_setup()
    lam = {"a": 0.2, "b": 0.2, "c": 0.2}
    masks = masks_at(vectors, total, lam)
    votes = sum(masks[t]["w"].int() for t in masks)

    def val_accuracy(weights, task):  # constant: the smallest λ wins every tie
        return 0.5

    out = merge("consensus", pre, experts, data=TaskData(_encode, {}, 1.0, val_accuracy=val_accuracy),
                alpha=0.7, k=2, lambdas=[0.2, 0.5])
    torch.testing.assert_close(out["w"], 0.7 * total["w"] * (votes >= 2))


def test_tall_without_validation_is_refused():
    pre, experts, _, _ = _tall_setup()
    with pytest.raises(MergeflowError, match="choose λ_t on validation"):
        merge("tall_masks", pre, experts, data=TaskData(_encode, {}, 1.0))


def test_emr_by_hand():
    pre = {"w": torch.zeros(4)}
    experts = {"a": {"w": torch.tensor([1.0, -2.0, 3.0, 0.0])}, "b": {"w": torch.tensor([2.0, 1.0, -1.0, 0.0])}}
    result = merge("emr", pre, experts)
    # σ = sign([3, -1, 2, 0]) with 0 → −1; T_uni = σ · max |T_t| over the agreeing tasks
    assert result.vector["w"].tolist() == [2.0, -2.0, 3.0, 0.0]
    assert result.masks["a"]["w"].tolist() == [True, True, True, False]
    assert result.masks["b"]["w"].tolist() == [True, False, False, False]
    assert result.scales["a"] == pytest.approx(6 / 7) and result.scales["b"] == pytest.approx(2.0)
    for t, sd in experts.items():  # each task's mean magnitude is reconstructed
        rebuilt = result.state(pre, t)["w"]
        assert float(rebuilt.abs().mean()) == pytest.approx(float(sd["w"].abs().mean()))


def test_emr_elect_on_stacks():
    uni, agree = elect(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    assert uni.tolist() == [1.0, -1.0] and agree.tolist() == [[True, True], [True, False]]


# --- storage -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (2, 3, 4)])
def test_bit_packing_round_trips(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, shape), mask)


def test_task_aware_results_round_trip_through_tensors():
    pre = {"w": torch.zeros(2, 3)}
    experts = {"a": {"w": torch.randn(2, 3)}, "b": {"w": torch.randn(2, 3)}}
    result = merge("emr", pre, experts)
    tensors, meta = result.to_tensors()
    back = from_tensors(tensors, meta)
    for t in experts:
        assert torch.equal(back.state(pre, t)["w"], result.state(pre, t)["w"])
    assert result.extra_bytes() == 6 * 4 + 2 * 1 + 2 * 4  # vector, one packed byte per mask, the scales
    adapted = AdaptedModel({"w": torch.ones(2, 3)}, {"a": (torch.randn(2, 3), torch.zeros(3, 2))})
    tensors, meta = adapted.to_tensors()
    assert torch.equal(from_tensors(tensors, meta).adapters["a"][0], adapted.adapters["a"][0])
    with pytest.raises(MergeflowError, match="not a task-aware merge result"):
        from_tensors({}, {"kind": "other"})


def test_registry_marks_the_new_methods():
    assert METHODS["emr"].task_aware and METHODS["tall_masks"].task_aware and METHODS["surgery"].task_aware
    assert METHODS["adamerging"].training and METHODS["surgery"].training
    assert not METHODS["consensus"].task_aware and METHODS["consensus"].scale == "alpha"


def test_one_pass_over_several_tasks_gives_each_task_its_logits():
    pre, _ = _models()
    data = _data()
    images = {t: data.unlabeled[t][:5] for t in TASKS}
    together = data.logits_of_tasks(pre, images)
    for t in TASKS:
        torch.testing.assert_close(together[t], data.logits(pre, t, images[t]))
