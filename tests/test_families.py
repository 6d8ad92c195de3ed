"""Model-family adapters (mergeflow.families) and token statistics (mergeflow.features.tokens)."""

import pytest
import torch

from conftest import perturbed
from mergeflow.errors import MergeflowError
from mergeflow.families import FAMILIES, Family, Rule, Unit, get_family
from mergeflow.features.tokens import collect_token_stats
from mergeflow.merge import METHODS, merge
from mergeflow.merge.reference import cat_reference, lot_reference

HF = get_family("hf-encoder")
OC = get_family("open_clip")
TINY = {"vocab_size": 60, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 40, "type_vocab_size": 2}


def _hf_models():
    from mergeflow.families.hf_encoder import _transformers

    tf = _transformers()
    out = {}
    for kind in ("bert", "roberta"):
        cfg = {**TINY, "model_type": kind}
        if kind == "roberta":
            cfg["pad_token_id"] = 1
        out[f"{kind}-body"] = HF.build(cfg)
        out[f"{kind}-classifier"] = HF.build(cfg, num_labels=3)
        config = tf.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "model_type"}, model_type=kind)
        out[f"{kind}-mlm"] = tf.AutoModelForMaskedLM.from_config(config)
    return out


# --- classification --------------------------------------------------------------------------------------
def test_every_parameter_of_bert_and_roberta_models_is_classified():
    for name, model in _hf_models().items():
        state = model.state_dict()
        units = HF.units(state)  # raises on an unclassified parameter
        assert set(units) == set(state), name
        kinds = {u.kind for u in units.values()}
        assert {"linear", "scale", "shift", "embedding"} <= kinds, name
        if "classifier" in name or "mlm" in name:
            assert "head" in kinds
        for key, unit in units.items():
            if unit.kind in ("linear", "scale", "embedding"):
                assert unit.site is not None and unit.site in state, key
            if unit.kind == "linear":
                assert unit.matrix(state[key]).shape == state[key].shape


def test_q_k_v_share_the_query_site_and_heads_are_per_task():
    prefix = "roberta.encoder.layer.1.attention.self."
    sites = {HF.unit(prefix + p + ".weight").site for p in ("query", "key", "value")}
    assert sites == {prefix + "query.weight"}
    assert HF.unit("encoder.layer.0.attention.self.value.weight").site == "encoder.layer.0.attention.self.query.weight"
    assert HF.unit("classifier.out_proj.weight").kind == "head"
    assert HF.unit("lm_head.decoder.weight").kind == "head"
    assert HF.unit("bert.pooler.dense.weight") == Unit("linear", "bert.pooler.dense.weight")
    assert HF.unit("roberta.embeddings.position_ids").kind == "excluded"
    assert HF.unit("roberta.embeddings.word_embeddings.weight").kind == "embedding"


def test_an_unclassified_parameter_is_an_error_naming_it():
    with pytest.raises(MergeflowError, match=r"hf-encoder: parameter 'roberta.encoder.layer.0.rotary.inv_freq' "
                                             r"is not classified"):
        HF.unit("roberta.encoder.layer.0.rotary.inv_freq")
    pre = {"roberta.encoder.layer.0.mystery": torch.zeros(2)}
    with pytest.raises(MergeflowError, match="mystery"):
        merge("task_arithmetic", pre, {"a": pre}, family="hf-encoder", alpha=1.0)
    with pytest.raises(MergeflowError, match="model.family: unknown family 'gpt9'; known: "):
        get_family("gpt9")


def test_open_clip_adapter_keeps_the_vision_rules(micro_state):
    units = OC.units(micro_state)
    expected = {"conv1.weight": ("other", "linear"), "proj": ("other", "linear"), "class_embedding": ("shift",) * 2,
                "positional_embedding": ("other",) * 2, "ln_pre.weight": ("scale",) * 2, "ln_pre.bias": ("shift",) * 2}
    for key, (plain, extended) in expected.items():
        assert units[key].resolved().kind == plain and units[key].resolved(("conv1", "proj")).kind == extended, key
    qkv = units["transformer.resblocks.0.attn.in_proj_weight"]
    assert qkv.kind == "linear" and qkv.blocks == 3 and qkv.site == "transformer.resblocks.0.attn.in_proj_weight"
    assert len(qkv.row_blocks(96, True)) == 3 and len(qkv.row_blocks(96, False)) == 1
    proj = units["proj"]
    assert proj.input_major and torch.equal(proj.matrix(micro_state["proj"]), micro_state["proj"].t())
    for key in micro_state:  # every other key is one of the rules of algorithms.md §1
        if key.endswith(("attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
            assert units[key] == Unit("linear", key)
        elif key.endswith(("ln_1.weight", "ln_2.weight", "ln_post.weight")):
            assert units[key] == Unit("scale", key)
        elif key.endswith("bias"):
            assert units[key].kind == "shift"


def test_families_are_data():
    family = Family("toy", "a toy family", (Rule(r"\.w$", "linear", site_is_key=True), Rule(r"\.b$", "shift")))
    assert family.unit("layer.w") == Unit("linear", "layer.w")
    with pytest.raises(ValueError, match="unknown unit kind 'matrix'"):
        Rule("x", "matrix")
    assert {"open_clip", "hf-encoder"} <= set(FAMILIES)


# --- token statistics -------------------------------------------------------------------------------------
def _padded_batch(lengths, vocab=60, width=12, pad=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_token_statistics_of_a_padded_batch_equal_one_sequence_at_a_time(kind):
    model = HF.build({**TINY, "model_type": kind, "pad_token_id": 1}).double()
    batch = _padded_batch([12, 5, 9, 3])
    padded = collect_token_stats(model, batch, HF, dtype=torch.float64)
    single = collect_token_stats(model, [{k: v[i:i + 1, :int(batch["attention_mask"][i].sum())] for k, v in
                                          batch.items()} for i in range(4)], HF, dtype=torch.float64)
    assert padded.rows == single.rows and padded.rows["encoder.layer.0.attention.self.query.weight"] == 29
    for name in ("gram", "sqnorm", "counts"):
        a, b = getattr(padded, name), getattr(single, name)
        assert set(a) == set(b) and a
        for site in a:
            assert torch.allclose(a[site], b[site], rtol=1e-6, atol=1e-9), (name, site)


def test_token_statistics_equal_a_manual_recomputation():
    model = HF.build({**TINY, "model_type": "bert"}).double()
    batch = _padded_batch([7, 12, 2], pad=0, seed=3)
    stats = collect_token_stats(model, batch, HF, dtype=torch.float64)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    real = batch["attention_mask"].bool()
    for layer in range(2):
        x = out.hidden_states[layer][real]
        g = stats.gram[f"encoder.layer.{layer}.attention.self.query.weight"]
        assert torch.allclose(g, x.t() @ x, rtol=1e-6), layer
    first = out.hidden_states[-1][:, 0]
    assert torch.allclose(stats.gram["pooler.dense.weight"], first.t() @ first, rtol=1e-6)
    assert stats.rows["pooler.dense.weight"] == 3
    words = torch.bincount(batch["input_ids"][real], minlength=60).double()
    assert torch.equal(stats.counts["embeddings.word_embeddings.weight"], words)
    positions = stats.counts["embeddings.position_embeddings.weight"]
    assert positions[:2].tolist() == [3, 3] and positions[7:12].tolist() == [1] * 5 and positions[12:].sum() == 0
    emb = model.embeddings
    summed = (emb.word_embeddings.weight[batch["input_ids"]] + emb.position_embeddings.weight[:12]
              + emb.token_type_embeddings.weight[0])[real]
    xhat = (summed - summed.mean(-1, keepdim=True)) / torch.sqrt(summed.var(-1, unbiased=False, keepdim=True)
                                                                    + emb.LayerNorm.eps)
    assert torch.allclose(stats.sqnorm["embeddings.LayerNorm.weight"], (xhat ** 2).sum(0), rtol=1e-6)


def test_task_weighting_divides_by_the_row_count():
    model = HF.build({**TINY, "model_type": "roberta", "pad_token_id": 1})
    batch = _padded_batch([12, 4])
    tokens = collect_token_stats(model, batch, HF, dtype=torch.float64)
    task = collect_token_stats(model, batch, HF, dtype=torch.float64, weighting="task")
    site = "encoder.layer.1.intermediate.dense.weight"
    assert task.weighting == "task" and task.rows == tokens.rows
    assert torch.allclose(task.gram[site], tokens.gram[site] / 16)
    assert float(task.counts["embeddings.word_embeddings.weight"].sum()) == pytest.approx(1.0)
    assert task.row_weight(site) == 1.0 and tokens.row_weight(site) == 16.0
    roundtrip = type(task).from_tensors(task.to_tensors())
    assert roundtrip.weighting == "task" and torch.equal(roundtrip.counts["embeddings.word_embeddings.weight"],
                                                         task.counts["embeddings.word_embeddings.weight"])
    with pytest.raises(MergeflowError, match="features.weighting: 'words' is not one of tokens, task"):
        collect_token_stats(model, batch, HF, weighting="words")


# --- methods on a 2-layer RoBERTa -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def roberta_suite():
    """A 2-layer RoBERTa body, three experts (perturbed bodies with their own heads of 2, 3 and 1 outputs)
    and each expert's token statistics on its own padded exemplars."""
    cfg = {**TINY, "model_type": "roberta", "pad_token_id": 1}
    base = HF.build(cfg)
    pre = {k: v.clone() for k, v in base.state_dict().items()}
    experts, stats = {}, {}
    for i, labels in enumerate((2, 3, 1)):
        task = HF.build(cfg, num_labels=labels)
        body = perturbed(pre, i, scale=0.02)
        state = {**{f"roberta.{k}": v for k, v in body.items()},
                 **{k: v for k, v in task.state_dict().items() if k.startswith("classifier.")}}
        task.load_state_dict(state)
        experts[f"t{i}"] = state
        vocab_part = 20 * i  # each task uses its own part of the vocabulary: unused rows exist
        batch = _padded_batch([10, 6, 12], seed=i)
        batch["input_ids"] = torch.where(batch["attention_mask"].bool(), 3 + (batch["input_ids"] % 17) + vocab_part,
                                         batch["input_ids"]).clamp(max=59)
        stats[f"t{i}"] = collect_token_stats(task, batch, HF, dtype=torch.float64)
    pre = {f"roberta.{k}": v for k, v in pre.items()}
    return pre, experts, stats


def _relative(a, b, pre):
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b)
    den = sum(float((b[k].double() - pre[k].double()).pow(2).sum()) for k in b)
    return (num / den) ** 0.5


def test_heads_are_kept_out_of_the_merge(roberta_suite):
    pre, experts, _ = roberta_suite
    out = merge("task_arithmetic", pre, experts, family="hf-encoder", alpha=0.3)
    assert set(out) == set(pre) and not any(k.startswith("classifier.") for k in out)
    buffered = {**pre, "roberta.embeddings.position_ids": torch.arange(40)[None]}
    out = merge("weight_averaging", buffered, experts, family="hf-encoder")
    assert torch.equal(out["roberta.embeddings.position_ids"], torch.arange(40)[None])


@pytest.mark.parametrize("hp", [{"c": 3, "split_qkv": True, "rescale": False},
                                {"c": 2, "split_qkv": False, "rescale": True}])
def test_cat_fast_equals_reference_on_roberta(roberta_suite, hp):
    pre, experts, stats = roberta_suite
    full = {"alpha": 0.4, "lambda": 2.0, "c_ln": 3, "lambda_ln": 10.0, "c_shift": 2, "eig_order": "top", **hp}
    fast = merge("cat", pre, experts, stats=stats, family="hf-encoder", **full)
    body = {t: HF.merged_part(sd) for t, sd in experts.items()}
    ref = cat_reference(pre, body, stats, alpha=0.4, c=hp["c"], lam=2.0, c_ln=3, lambda_ln=10.0, c_shift=2,
                        split_qkv=hp["split_qkv"], rescale=hp["rescale"], family=HF)
    assert _relative(fast, ref, pre) < 1e-5
    ta = merge("task_arithmetic", pre, experts, family="hf-encoder", alpha=0.4)
    assert _relative(fast, ta, pre) > 1e-3  # the trimming did something
    emb = "roberta.embeddings.word_embeddings.weight"  # CAT leaves embeddings to task arithmetic
    assert torch.allclose(fast[emb], ta[emb])


def test_lot_fast_equals_reference_on_roberta(roberta_suite):
    pre, experts, stats = roberta_suite
    fast = merge("lot", pre, experts, stats=stats, family="hf-encoder", **{"lambda": 1.0})
    body = {t: HF.merged_part(sd) for t, sd in experts.items()}
    ref = lot_reference(pre, body, stats, lam=1.0, family=HF)
    assert _relative(fast, ref, pre) < 1e-5


def test_lot_embedding_rows_are_count_weighted_means(roberta_suite):
    pre, experts, stats = roberta_suite
    key = "roberta.embeddings.word_embeddings.weight"
    out = merge("lot", pre, experts, stats=stats, family="hf-encoder", **{"lambda": 1.0})
    vectors = torch.stack([experts[t][key].double() - pre[key].double() for t in experts])
    counts = torch.stack([stats[t].counts[key] for t in experts])
    delta = out[key].double() - pre[key].double()
    for row in range(60):
        c = counts[:, row]
        expected = (c[:, None] * vectors[:, row]).sum(0) / c.sum() if c.sum() > 0 else vectors[:, row].mean(0)
        assert torch.allclose(delta[row], expected, atol=1e-6), row
    assert (counts.sum(0) == 0).any() and ((counts > 0).sum(0) == 1).any()  # unused rows and one-task rows exist


def test_lot_equals_regmean_at_full_rank_on_roberta(roberta_suite):
    pre, experts, stats = roberta_suite
    lot = merge("lot", pre, experts, stats=stats, family="hf-encoder", **{"lambda": 1.0})
    regmean = merge("regmean", pre, experts, stats=stats, family="hf-encoder", a=1.0)
    for key, unit in HF.units(pre).items():
        if unit.kind == "linear" and unit.site in stats["t0"].gram:
            total = sum(stats[t].gram[unit.site] for t in stats)
            if torch.linalg.matrix_rank(total) == total.shape[0]:
                assert torch.allclose(lot[key], regmean[key], atol=1e-5), key


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_weight_method_merges_a_roberta_body(roberta_suite, name):
    spec = METHODS[name]
    if spec.uses:
        pytest.skip(f"{name} runs the encoder on data (the text pipeline supplies it)")
    pre, experts, stats = roberta_suite
    kinds = spec.stat_kinds(spec.resolve({}))
    if kinds - {"gram"}:
        pytest.skip(f"{name} needs {sorted(kinds - {'gram'})} statistics")
    out = merge(name, pre, experts, stats=stats if kinds else None, family="hf-encoder")
    if spec.task_aware:
        out = out.state(pre, "t1")
    assert set(out) == set(pre)
    assert all(torch.isfinite(v).all() for v in out.values() if v.is_floating_point())


# --- methods that run the model, on a text body (mergeflow.text.task_data) --------------------------------
def _token_data(roberta_suite, uses, val_accuracy=None):
    from mergeflow.text.task_data import token_task_data

    pre, experts, _ = roberta_suite
    cfg = {**TINY, "model_type": "roberta", "pad_token_id": 1}
    models, unlabeled = {}, {}
    for i, (task, labels) in enumerate(zip(experts, (2, 3, 1), strict=True)):
        models[task] = HF.build(cfg, num_labels=labels)
        models[task].load_state_dict({**pre, **{k: v for k, v in experts[task].items() if k.startswith("classifier.")}})
        unlabeled[task] = {k: v.numpy() for k, v in _padded_batch([10, 6, 12, 4, 9], seed=10 + i).items()}
    return token_task_data(models, {"t2"}, uses, unlabeled, "test", val_accuracy)


def test_token_task_data_runs_a_body_through_each_tasks_own_head(roberta_suite):
    pre, experts, _ = roberta_suite
    data = _token_data(roberta_suite, ("unlabeled",))
    batches = {t: data.sample(t, 99, torch.Generator().manual_seed(0)) for t in experts}
    assert all(len(b["input_ids"]) == 5 for b in batches.values())  # a count over the split: every row, once
    weights = {k: v.clone().requires_grad_(True) for k, v in pre.items() if v.is_floating_point()}
    logits = data.logits_of_tasks(weights, batches)
    assert set(logits) == {"t0", "t1"} and logits["t0"].shape == (5, 2) and logits["t1"].shape == (5, 3)
    with torch.no_grad():
        direct = data.models["t1"](**batches["t1"]).logits
    assert torch.equal(logits["t1"], direct)  # the pre-trained body: the module's own weights
    logits["t1"].sum().backward()
    assert float(weights["roberta.encoder.layer.0.attention.self.query.weight"].grad.abs().sum()) > 0
    assert set(data.not_applicable) == {"t2"} and "regression" in data.not_applicable["t2"]
    assert _token_data(roberta_suite, ("validation",)).not_applicable == {}


def test_adamerging_on_a_text_body_starts_at_its_closed_form_and_lowers_the_entropy(roberta_suite):
    pre, experts, _ = roberta_suite
    data = _token_data(roberta_suite, ("unlabeled",))
    start = merge("adamerging", pre, experts, data=data, family="hf-encoder", steps=0, init=0.3)
    for key, value in pre.items():
        if value.is_floating_point():
            expected = value + 0.3 * sum(experts[t][key] - value for t in experts)
            assert torch.allclose(start[key], expected, atol=1e-6), key
    diagnostics = {}
    # every row each step (batch_size over the split): plain gradient descent on a fixed objective
    merge("adamerging", pre, experts, data=data, diagnostics=diagnostics, family="hf-encoder", steps=20, lr=0.05,
          batch_size=99, granularity="task")
    assert diagnostics["loss"]["last"] < diagnostics["loss"]["first"], diagnostics["loss"]


def test_tall_masks_and_consensus_on_a_text_body_pick_each_lambda_on_validation(roberta_suite):
    pre, experts, _ = roberta_suite
    calls = []

    def val_accuracy(weights, task):  # closest to the task's expert scores best
        calls.append(task)
        return -sum(float((weights[k] - experts[task][k]).pow(2).sum()) for k in weights)

    data = _token_data(roberta_suite, ("validation",), val_accuracy)
    diagnostics = {}
    masked = merge("tall_masks", pre, experts, data=data, diagnostics=diagnostics, family="hf-encoder")
    assert set(masked.tasks) == set(experts) and set(calls) == set(experts)
    for task, curve in diagnostics["lambda_curves"].items():
        assert diagnostics["lambdas"][task] == max(curve, key=lambda p: p["val_accuracy"])["lambda"]
    consensus = merge("consensus", pre, experts, data=data, family="hf-encoder", alpha=0.3)
    assert set(consensus) == set(pre) and all(torch.isfinite(v).all() for v in consensus.values())


def test_an_expert_with_another_vocabulary_is_one_line_naming_both_sizes(roberta_suite):
    pre, experts, _ = roberta_suite
    key = "roberta.embeddings.word_embeddings.weight"
    other = {**experts["t0"], key: torch.zeros(61, 16)}
    with pytest.raises(MergeflowError, match=rf"expert 't0': {key} has shape \(61, 16\), pretrained \(60, 16\)"):
        merge("task_arithmetic", pre, {"t0": other, "t1": experts["t1"]}, family="hf-encoder", alpha=0.3)
