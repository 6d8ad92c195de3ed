"""The decoder-LM adapter (``hf-decoder``, issue 30 item 1): LLaMA-style and GPT-2 parameters classified, their
token statistics (RMSNorm, GQA, Conv1D) checked against a recomputation, and methods merging tiny decoders."""

import pytest
import torch

from conftest import perturbed
from mergeflow.errors import MergeflowError
from mergeflow.families import get_family
from mergeflow.features.tokens import collect_token_stats
from mergeflow.merge import merge

DEC = get_family("hf-decoder")
SMALL = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64, "pad_token_id": 0,
         "tie_word_embeddings": False}
GPT2 = {"model_type": "gpt2", "vocab_size": 50, "n_embd": 16, "n_layer": 2, "n_head": 2, "n_positions": 64,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}
CONFIGS = {kind: {**SMALL, "model_type": kind} for kind in ("llama", "mistral", "qwen2", "qwen3")} | {"gpt2": GPT2}


def _padded(lengths, vocab=50, width=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):  # right padding, as a causal LM's batches are built
        ids[i, :n] = torch.randint(2, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_parameter_of_causal_lms_and_classifiers_is_classified(kind):
    for num_labels in (None, 3):
        model = DEC.build(CONFIGS[kind], num_labels)
        state = model.state_dict()
        units = DEC.units(state)  # raises on an unclassified parameter
        buffers = {name for name, _ in model.named_buffers()}
        assert all(DEC.unit(b).kind == "excluded" for b in buffers), buffers
        # a parameter is never excluded (GPT-2's c_attn.bias once matched the pattern of the mask buffer attn.bias)
        assert not [k for k, _ in model.named_parameters() if units[k].kind == "excluded"]
        if num_labels is None:
            assert units["lm_head.weight"].kind == "linear"
        else:
            assert units["score.weight"].kind == "head"
    if kind == "gpt2":
        c_attn = DEC.unit("transformer.h.0.attn.c_attn.weight")
        assert c_attn.input_major and c_attn.blocks == 3
        w = torch.randn(16, 48)  # Conv1D: (d_in, 3 d_out)
        assert c_attn.matrix(w).shape == (48, 16) and torch.equal(c_attn.from_matrix(c_attn.matrix(w), w), w)
        assert DEC.unit("transformer.wpe.weight").kind == "embedding"
    else:
        q = DEC.unit("model.layers.1.self_attn.q_proj.weight").site
        assert DEC.unit("model.layers.1.self_attn.k_proj.weight").site == q == "model.layers.1.self_attn.q_proj.weight"
        assert DEC.unit("model.layers.1.mlp.up_proj.weight").site == "model.layers.1.mlp.gate_proj.weight"
        assert DEC.unit("model.norm.weight").kind == "scale"


@pytest.mark.parametrize("kind", ["llama", "qwen3", "gpt2"])
def test_token_statistics_of_a_padded_batch_equal_a_recomputation(kind):
    model = DEC.build(CONFIGS[kind]).double()
    batch = _padded([9, 4, 7])
    stats = collect_token_stats(model, batch, DEC, dtype=torch.float64)
    one_by_one = collect_token_stats(model, [{k: v[i:i + 1, :n] for k, v in batch.items()}
                                            for i, n in enumerate([9, 4, 7])], DEC, dtype=torch.float64)
    for site, gram in stats.gram.items():
        assert torch.allclose(gram, one_by_one.gram[site], atol=1e-9), site
    for site, value in stats.sqnorm.items():
        assert torch.allclose(value, one_by_one.sqnorm[site], atol=1e-9), site
    # the first block's attention input, from the hidden states: normalised, real tokens only
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[0][batch["attention_mask"].bool()]
    if kind == "gpt2":
        ln = model.transformer.h[0].ln_1
        xhat = (hidden - hidden.mean(-1, keepdim=True)) / torch.sqrt(hidden.var(-1, unbiased=False, keepdim=True)
                                                                      + ln.eps)
        site, norm_site, x = "transformer.h.0.attn.c_attn.weight", "transformer.h.0.ln_1.weight", ln(hidden)
    else:
        ln = model.model.layers[0].input_layernorm
        xhat = hidden / torch.sqrt(hidden.pow(2).mean(-1, keepdim=True) + ln.variance_epsilon)
        site, norm_site = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.input_layernorm.weight"
        x = ln(hidden)
    assert torch.allclose(stats.gram[site], x.t() @ x, atol=1e-9)
    assert torch.allclose(stats.sqnorm[norm_site], (xhat ** 2).sum(0), atol=1e-9)
    assert stats.rows[site] == 20
    if kind == "qwen3":  # per-head norms: one row per real token and head
        assert stats.rows["model.layers.0.self_attn.k_norm.weight"] == 20 * SMALL["num_key_value_heads"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def decoder_suite(request):
    base = DEC.build(CONFIGS[request.param]).double()
    pre = {k: v.clone() for k, v in base.state_dict().items()}
    experts, stats = {}, {}
    for i in range(3):
        state = perturbed(pre, i, scale=0.02)
        model = DEC.build(CONFIGS[request.param]).double()
        model.load_state_dict(state)
        experts[f"t{i}"] = state
        stats[f"t{i}"] = collect_token_stats(model, _padded([10, 8, 10, 9], seed=i), DEC, dtype=torch.float64)
    return pre, experts, stats


def test_lot_equals_regmean_at_full_rank_on_a_decoder(decoder_suite):
    pre, experts, stats = decoder_suite
    lot = merge("lot", pre, experts, stats=stats, family="hf-decoder", **{"lambda": 1.0})
    regmean = merge("regmean", pre, experts, stats=stats, family="hf-decoder", a=1.0)
    checked = 0
    for key, unit in DEC.units(pre).items():
        if unit.kind == "linear" and unit.site in stats["t0"].gram:
            total = sum(stats[t].gram[unit.site] for t in stats)
            if torch.linalg.matrix_rank(total) == total.shape[0]:
                assert torch.allclose(lot[key], regmean[key], atol=1e-6), key
                checked += 1
    assert checked >= 4


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "cat", "tsv", "iso_cts"])
def test_methods_merge_a_decoder_to_its_shapes(decoder_suite, name):
    pre, experts, stats = decoder_suite
    hp = {"alpha": 0.3} if name != "cat" else {"alpha": 0.3, "exemplars": 4}
    out = merge(name, pre, experts, stats=stats if name == "cat" else None, family="hf-decoder", **hp)
    assert set(out) == set(pre)
    assert all(out[k].shape == pre[k].shape and torch.isfinite(out[k]).all() for k in pre if pre[k].is_floating_point())


def test_regmean_on_gpt2s_input_major_weight_is_the_closed_form():
    """RegMean of a Conv1D weight (stored (d_in, d_out), y = x W): (Σ G_k)⁻¹ Σ G_k W_k in that layout."""
    base = DEC.build(GPT2).double()
    pre = {k: v.clone() for k, v in base.state_dict().items()}
    experts, stats = {}, {}
    for i in range(2):
        experts[f"t{i}"] = perturbed(pre, i, scale=0.05)
        model = DEC.build(GPT2).double()
        model.load_state_dict(experts[f"t{i}"])
        stats[f"t{i}"] = collect_token_stats(model, _padded([10, 10, 9, 10], seed=i), DEC, dtype=torch.float64)
    out = merge("regmean", pre, experts, stats=stats, family="hf-decoder", a=1.0)
    key = "transformer.h.0.mlp.c_fc.weight"
    grams = [stats[t].gram[key] for t in experts]
    expected = torch.linalg.solve(sum(grams), sum(g @ experts[t][key] for g, t in zip(grams, experts, strict=True)))
    assert torch.allclose(out[key], expected, atol=1e-8)


# --- tied input/output embeddings: LOT's rule over both roles -------------------------------------------------
def _tied_suite(kind: str):
    """A tied model's state dict as saved (no separate lm_head.weight), three perturbed experts, their
    statistics, and each expert's lm_head inputs on real tokens (captured here, apart from the stats code)."""
    cfg = {**CONFIGS[kind], "tie_word_embeddings": True}
    base = DEC.build(cfg).double()
    pre = {k: v.clone() for k, v in base.state_dict().items() if k != "lm_head.weight"}
    experts, stats, inputs = {}, {}, {}
    for i in range(3):
        state = perturbed(pre, i, scale=0.02)
        model = DEC.build(cfg).double()
        model.load_state_dict(state, strict=False)  # the tie makes lm_head the embedding
        assert model.lm_head.weight is model.get_input_embeddings().weight
        batch = _padded([10, 7, 10, 9], seed=i)
        stats[f"t{i}"] = collect_token_stats(model, batch, DEC, dtype=torch.float64)
        seen = []
        handle = model.lm_head.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[0]))
        with torch.no_grad():
            model(**batch)
        handle.remove()
        inputs[f"t{i}"] = seen[0][batch["attention_mask"].bool()]
        experts[f"t{i}"] = state
    return pre, experts, stats, inputs


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_lot_on_a_tied_embedding_is_the_least_squares_of_both_roles(kind):
    """Brute force: per row v, lstsq of the stacked system [H_k; sqrt(c_k[v]) I] t = [H_k T_k[v]; sqrt(c_k[v]) T_k[v]]
    over the tasks (H_k the projection's inputs), against the closed form's one eigendecomposition."""
    pre, experts, stats, inputs = _tied_suite(kind)
    key = "model.embed_tokens.weight" if kind != "gpt2" else "transformer.wte.weight"
    for t in experts:  # the statistics code saw the same inputs
        assert torch.allclose(stats[t].gram["lm_head.weight"], inputs[t].t() @ inputs[t], atol=1e-9)
    merged = merge("lot", pre, experts, stats=stats, family="hf-decoder", **{"lambda": 1.0})
    ours = merged[key] - pre[key]
    vectors = {t: experts[t][key] - pre[key] for t in experts}
    eye = torch.eye(pre[key].shape[1], dtype=torch.float64)
    used = 0
    for v in range(pre[key].shape[0]):
        rows, targets = [], []
        for t in experts:
            c = float(stats[t].counts[key][v])
            rows += [inputs[t], c ** 0.5 * eye]
            targets += [inputs[t] @ vectors[t][v], c ** 0.5 * vectors[t][v]]
        solution = torch.linalg.lstsq(torch.cat(rows), torch.cat(targets).unsqueeze(1)).solution.squeeze(1)
        assert torch.allclose(ours[v], solution, atol=1e-8), v
        used += any(stats[t].counts[key][v] > 0 for t in experts)
    assert 0 < used < pre[key].shape[0]  # rows some task looked up, and rows none did (the logit role only)


def test_lot_tied_fast_path_equals_the_reference_and_an_untied_table_keeps_its_lookup_rule():
    from mergeflow.merge.lot import lot_embedding
    from mergeflow.merge.reference import lot_reference

    pre, experts, stats, _ = _tied_suite("llama")
    fast = merge("lot", pre, experts, stats=stats, family="hf-decoder", **{"lambda": 1.3})
    slow = lot_reference(pre, experts, stats, lam=1.3, family=DEC)
    for key in pre:
        if pre[key].is_floating_point():
            assert torch.allclose(fast[key], slow[key], atol=1e-8, rtol=1e-6), key
    # the same experts untied (a separate lm_head.weight): the table is a lookup only, lm_head a linear unit
    key = "model.embed_tokens.weight"
    untied = {**pre, "lm_head.weight": pre[key].clone()}
    experts_u = {t: {**e, "lm_head.weight": e[key].clone()} for t, e in experts.items()}
    out = merge("lot", untied, experts_u, stats=stats, family="hf-decoder", **{"lambda": 1.0})
    lookup = lot_embedding([experts[t][key] - pre[key] for t in experts], [stats[t].counts[key] for t in experts])
    assert torch.allclose(out[key] - pre[key], lookup.to(pre[key].dtype), atol=1e-10)
    tied = merge("lot", pre, experts, stats=stats, family="hf-decoder", **{"lambda": 1.0})
    assert (out[key] - tied[key]).abs().max() > 1e-4  # the logit role moves the tied table


def _relative(a, b, pre):
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b if pre[k].is_floating_point())
    den = sum(float((b[k].double() - pre[k].double()).pow(2).sum()) for k in b if pre[k].is_floating_point())
    return (num / den) ** 0.5


@pytest.mark.parametrize("decoder_suite", ["llama"], indirect=True)
@pytest.mark.parametrize("vocabulary", ["skip", "trim"])
def test_cat_fast_equals_reference_on_a_two_layer_llama_and_skips_its_vocabulary_head(decoder_suite, vocabulary):
    """Issue 30: the reference CAT equals the fast path to 1e-5 relative on a 2-layer LLaMA (untied, GQA);
    by default the untied lm_head is summed untrimmed (task arithmetic's value), with ``vocabulary: trim``
    it is trimmed like any linear unit."""
    from mergeflow.merge.reference import cat_reference

    pre, experts, stats = decoder_suite
    hp = {"alpha": 0.4, "c": 2, "lambda": 2.0, "c_ln": 2, "lambda_ln": 10.0, "c_shift": 2}
    fast = merge("cat", pre, experts, stats=stats, family="hf-decoder", vocabulary=vocabulary, **hp)
    ref = cat_reference(pre, experts, stats, alpha=0.4, c=2, lam=2.0, c_ln=2, lambda_ln=10.0, c_shift=2,
                        vocabulary=vocabulary, family=DEC)
    assert _relative(fast, ref, pre) < 1e-5
    ta = merge("task_arithmetic", pre, experts, family="hf-decoder", alpha=0.4)
    head, proj = "lm_head.weight", "model.layers.1.mlp.down_proj.weight"
    assert (fast[proj] - ta[proj]).abs().max() > 1e-6  # the body's linear units are trimmed
    if vocabulary == "skip":
        assert (fast[head] - ta[head]).abs().max() < 1e-7  # task arithmetic sums in float32
    else:
        assert (fast[head] - ta[head]).abs().max() > 1e-6


@pytest.mark.parametrize("decoder_suite", ["llama"], indirect=True)
def test_lot_fast_equals_reference_on_a_two_layer_llama(decoder_suite):
    from mergeflow.merge.reference import lot_reference

    pre, experts, stats = decoder_suite
    fast = merge("lot", pre, experts, stats=stats, family="hf-decoder", **{"lambda": 1.3})
    ref = lot_reference(pre, experts, stats, lam=1.3, family=DEC)
    assert _relative(fast, ref, pre) < 1e-5
    assert (fast["lm_head.weight"] - pre["lm_head.weight"]).abs().max() > 0  # solved as a linear unit


@pytest.mark.parametrize("kind", ["llama-tied", "qwen3", "gpt2"])
def test_statistics_written_a_few_layers_at_a_time_are_the_whole_collections_bytes(kind, tmp_path):
    """Item 4's statistics per layer: one pass per group of layers, joined: the bytes of the whole collection."""
    from mergeflow.features.tokens import observed_sites, write_token_stats
    from mergeflow.io import save_tensors

    config = {**CONFIGS["llama"], "tie_word_embeddings": True} if kind == "llama-tied" else CONFIGS[kind]
    torch.manual_seed(0)
    model = DEC.build(config)
    batches = [_padded([9, 4, 7], seed=1), _padded([5, 10], seed=2)]
    for weighting in ("tokens", "task"):
        whole = tmp_path / f"whole-{weighting}.safetensors"
        save_tensors(whole, collect_token_stats(model, batches, DEC, weighting=weighting).to_tensors(), {"task": "t"})
        for per_pass in (1, 2, 100):
            out = tmp_path / f"layered-{weighting}-{per_pass}.safetensors"
            write_token_stats(model, batches, DEC, out, layers_per_pass=per_pass, metadata={"task": "t"},
                              weighting=weighting)
            assert out.read_bytes() == whole.read_bytes(), (weighting, per_pass)
    assert "lm_head.weight" in observed_sites(model, DEC) or kind == "gpt2"  # the tied projection's input, too
    assert not list(tmp_path.glob(".*"))  # the parts are gone
    with pytest.raises(MergeflowError, match="layers_per_pass must be at least 1, not 0"):
        write_token_stats(model, batches, DEC, tmp_path / "x.safetensors", layers_per_pass=0)
