"""Streamed merging (issue 30 item 4): a layer (or a block of a vocabulary table's rows) at a time from safetensors
files gives the bytes of the whole-model merge; bad inputs are one line and leave nothing behind."""

import json

import pytest
import torch

from conftest import perturbed
from mergeflow.errors import MergeflowError
from mergeflow.families import get_family
from mergeflow.features.tokens import collect_token_stats
from mergeflow.io import load_metadata, save_tensors
from mergeflow.merge import METHODS, merge
from mergeflow.merge.stream import merge_streamed, plan

DEC = get_family("hf-decoder")
TIED = {"model_type": "llama", "vocab_size": 96, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64, "pad_token_id": 0,
        "tie_word_embeddings": True}
HP = {"task_arithmetic": {"alpha": 0.3}, "lot": {"lambda": 1.1}, "cat": {"alpha": 0.3, "c": 2, "c_ln": 2, "c_shift": 2},
      "regmean": {"a": 0.9}, "iso_c": {"alpha": 0.8}, "iso_cts": {"alpha": 0.8}, "tsv": {"alpha": 0.8},
      "cart": {"lambda": 1.5}, "wudi": {"alpha": 1.0, "steps": 5, "lr": 1e-3}, "weight_averaging": {},
      "ties": {"alpha": 0.4, "density": 0.3}}
STREAMED = sorted(n for n, s in METHODS.items() if s.per_unit)


def _batch(seed, vocab=96):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module", params=["tied", "untied"])
def decoder_files(request, tmp_path_factory):
    """A 2-layer LLaMA (tied as saved: no lm_head.weight; or untied), three experts and their statistics, on disk."""
    root = tmp_path_factory.mktemp(request.param)
    cfg = {**TIED, "tie_word_embeddings": request.param == "tied"}
    torch.manual_seed(0)
    base = DEC.build(cfg)
    pre = {k: v.clone() for k, v in base.state_dict().items() if request.param == "untied" or k != "lm_head.weight"}
    experts, stats = {}, {}
    for i in range(3):
        experts[f"t{i}"] = perturbed(pre, i, scale=0.02)
        model = DEC.build(cfg)
        model.load_state_dict(experts[f"t{i}"], strict=False)
        stats[f"t{i}"] = collect_token_stats(model, [_batch(i)], DEC)
    save_tensors(root / "base.safetensors", pre)
    paths = {t: root / f"{t}.safetensors" for t in experts}
    stat_paths = {t: root / f"{t}.stats.safetensors" for t in experts}
    for t in experts:
        save_tensors(paths[t], experts[t])
        save_tensors(stat_paths[t], stats[t].to_tensors())
    return root, pre, experts, stats, paths, stat_paths


def test_every_per_unit_method_is_tested_here():
    assert set(STREAMED) == set(HP)


@pytest.mark.parametrize("name", STREAMED)
def test_a_streamed_merge_writes_the_whole_merges_bytes(decoder_files, name, tmp_path):
    """Layer by layer, the token table (and an untied lm_head) in row blocks where the method allows: the
    file equals save_tensors of the whole-model merge, byte for byte."""
    _, pre, experts, stats, paths, stat_paths = decoder_files
    needs = METHODS[name].stat_kinds(METHODS[name].resolve(HP[name]))
    whole = merge(name, pre, experts, stats=stats if needs else None, family=DEC, **HP[name])
    save_tensors(tmp_path / "whole.safetensors", whole, {"method": name})
    report = merge_streamed(name, paths["t0"].parent / "base.safetensors", paths, tmp_path / "streamed.safetensors",
                            stats=stat_paths if needs else None, family=DEC, block_mib=0.002,
                            metadata={"method": name}, **HP[name])
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "whole.safetensors").read_bytes()
    assert load_metadata(tmp_path / "streamed.safetensors") == {"method": name}
    assert report["groups"] >= 4
    table = {"embedding"} | ({"linear"} if "lm_head.weight" in pre else set())  # an untied head travels with it
    if table <= set(METHODS[name].row_kinds):
        assert report["row_blocks"] >= 2  # the 96-row table (and head) read in blocks
    else:
        assert report["row_blocks"] == 0


def test_the_groups_are_layers_and_a_table_travels_with_its_projection(decoder_files):
    root, pre, *_, paths, _ = decoder_files
    the_plan, *_ = plan("task_arithmetic", root / "base.safetensors", paths, DEC, block_mib=1000)
    groups = [g.keys for g in the_plan.groups]
    layer0 = [k for k in pre if k.startswith("model.layers.0.")]
    assert sorted(layer0) in [sorted(g) for g in groups]
    table = [g for g in groups if "model.embed_tokens.weight" in g][0]
    assert table == sorted(["model.embed_tokens.weight"] + (["lm_head.weight"] if "lm_head.weight" in pre else []))


def test_a_method_whose_rule_is_not_per_unit_is_refused(decoder_files, tmp_path):
    root, *_, paths, _ = decoder_files
    with pytest.raises(MergeflowError, match=r"^pcb: its rule is not per unit, so it cannot be streamed; methods "
                                             r"that can: cart, cat, iso_c"):
        merge_streamed("pcb", root / "base.safetensors", paths, tmp_path / "out.safetensors", family=DEC)
    assert not list(tmp_path.iterdir())


def test_an_expert_missing_a_layer_is_one_line_and_nothing_is_written(decoder_files, tmp_path):
    root, pre, experts, *_ = decoder_files
    cut = {k: v for k, v in experts["t1"].items() if not k.startswith("model.layers.1.")}
    save_tensors(tmp_path / "cut.safetensors", cut)
    paths = {"t0": root / "t0.safetensors", "t1": tmp_path / "cut.safetensors"}
    first = sorted(k for k in pre if k.startswith("model.layers.1."))[0]
    with pytest.raises(MergeflowError, match=rf"^expert 't1' \(.*cut.safetensors\): tensor {first} missing "
                                             r"\(the base has it\)$"):
        merge_streamed("task_arithmetic", root / "base.safetensors", paths, tmp_path / "out.safetensors", family=DEC,
                       alpha=0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.safetensors"]


def test_an_expert_of_another_shape_is_one_line_naming_both(decoder_files, tmp_path):
    root, pre, experts, *_ = decoder_files
    key = "model.embed_tokens.weight"
    wider = {**experts["t1"], key: torch.zeros(100, 16)}
    save_tensors(tmp_path / "wide.safetensors", wider)
    paths = {"t0": root / "t0.safetensors", "t1": tmp_path / "wide.safetensors"}
    with pytest.raises(MergeflowError, match=rf"^expert 't1': {key} is F32 \[100, 16\], the base's F32 \[96, 16\]$"):
        merge_streamed("task_arithmetic", root / "base.safetensors", paths, tmp_path / "out.safetensors", family=DEC,
                       alpha=0.3)


def test_a_merge_that_fails_midway_leaves_no_output(decoder_files, tmp_path, monkeypatch):
    """A failure (or a kill) in the middle leaves only the temporary file's absence: nothing at the target."""
    import mergeflow.merge as merging

    root, *_, paths, _ = decoder_files
    calls = []
    real = merging.merge_part

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(merging, "merge_part", failing)
    with pytest.raises(RuntimeError, match="killed"):
        merge_streamed("task_arithmetic", root / "base.safetensors", paths, tmp_path / "out.safetensors", family=DEC,
                       alpha=0.3)
    assert not list(tmp_path.iterdir())


def test_the_header_follows_safetensors_layout_for_mixed_dtypes(tmp_path):
    """bf16, float32 and int64 tensors: the header (order, offsets, padding) equals safetensors' own."""
    from mergeflow.safetensors_file import header_for

    tensors = {"b.weight": torch.zeros(3, 5, dtype=torch.bfloat16), "a.weight": torch.zeros(2, dtype=torch.float32),
               "c.index": torch.arange(3), "d.half": torch.zeros(7, dtype=torch.float16)}
    save_tensors(tmp_path / "ref.safetensors", tensors, {"x": "1"})
    info = {k: ({torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64", torch.float16: "F16"}[v.dtype],
                list(v.shape)) for k, v in tensors.items()}
    header, _ = header_for(sorted(tensors), info, {"mergeflow": json.dumps({"x": "1"})})
    assert (tmp_path / "ref.safetensors").read_bytes()[:len(header)] == header


def test_a_truncated_expert_is_one_line_naming_it_before_anything_is_read(decoder_files, tmp_path):
    root, *_ = decoder_files
    raw = (root / "t1.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(raw[:-100])
    paths = {"t0": root / "t0.safetensors", "t1": tmp_path / "short.safetensors"}
    with pytest.raises(MergeflowError, match=r"^expert 't1' .*short.safetensors: unreadable safetensors file "
                                             r"\(.*: data offsets \[\d+, \d+\] do not fit its shape or the file\)$"):
        merge_streamed("task_arithmetic", root / "base.safetensors", paths, tmp_path / "out.safetensors", family=DEC,
                       alpha=0.3)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("density", [0.0, 0.01, 0.2, 0.999, 1.0])
def test_ties_whole_model_thresholds_from_parts_are_the_exact_kth_magnitudes(density):
    from mergeflow.merge.common import kth_smallest
    from mergeflow.merge.ties import ties_globals

    g = torch.Generator().manual_seed(0)
    pre = {f"p{i}": torch.randn(n, generator=g) for i, n in enumerate((7, 300, 1, 64))}
    experts = {t: {k: v + torch.randn(v.shape, generator=g).round(decimals=1) for k, v in pre.items()}  # ties
               for t in ("a", "b", "c")}

    def parts():
        for key in pre:  # one parameter at a time
            yield {key: pre[key]}, {t: {key: sd[key]} for t, sd in experts.items()}

    out = ties_globals(parts, density=density)
    d = sum(v.numel() for v in pre.values())
    k = d - int(density * d)
    for i, sd in enumerate(experts.values()):
        magnitude = torch.cat([(sd[key] - pre[key]).abs() for key in pre])
        assert out["thresholds"][i] == (kth_smallest(magnitude, k) if k > 0 else None)


def test_the_merge_files_command_writes_the_streamed_merge_and_names_bad_arguments(decoder_files, tmp_path, capsys):
    from mergeflow.cli import main

    root, pre, experts, stats, paths, stat_paths = decoder_files
    argv = ["merge-files", "--method", "lot", "--base", str(root / "base.safetensors"), "--set", "lambda=1.1",
            "--out", str(tmp_path / "lot.safetensors")]
    for t in paths:
        argv += ["--expert", f"{t}={paths[t]}", "--stats", f"{t}={stat_paths[t]}"]
    assert main(argv) == 0
    assert "lot of 3 experts" in capsys.readouterr().out
    whole = merge("lot", pre, experts, stats=stats, family=DEC, **{"lambda": 1.1})
    save_tensors(tmp_path / "whole.safetensors", whole, {"method": "lot"})
    assert (tmp_path / "lot.safetensors").read_bytes() == (tmp_path / "whole.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*argv[:-2], "--out", str(tmp_path / "x.safetensors"), "--expert", "t9"]) == 2
    assert capsys.readouterr().err.strip() == "mergeflow merge-files: error: --expert 't9': expected NAME=VALUE"
    assert main([*argv[:5], "--expert", f"t0={paths['t0']}", "--out", str(tmp_path / "y.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == ("mergeflow merge-files: error: lot needs statistics (gram) but none "
                                               "were given")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_statistics_files_of_saved_models_feed_the_streamed_merge(tmp_path, capsys):
    """The LLM route end to end: tied LLaMA experts written by save_pretrained, each one's statistics on a text
    file by `mergeflow stats-files` (two layers a pass), then `mergeflow merge-files` with LOT: the same bytes as
    the whole merge on statistics collected in one pass."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from mergeflow.cli import main
    from mergeflow.features.stats import TaskStats
    from mergeflow.io import load_tensors
    from mergeflow.text.tokenize import encode

    words = [f"w{i}" for i in range(60)]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"]))
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[int(j)] for j in torch.randint(0, 60, (int(n),), generator=g))
             for n in torch.randint(3, 12, (10,), generator=g)]
    (tmp_path / "texts.txt").write_text("\n".join(texts[:5]) + "\n\n" + "\n".join(texts[5:]) + "\n")
    config = tf.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=32,
                            max_position_embeddings=64, tie_word_embeddings=True, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    base = tf.LlamaForCausalLM(config)
    folders, stats = {}, {}
    for i in range(2):
        expert = tf.LlamaForCausalLM(config)
        expert.load_state_dict(perturbed(base.state_dict(), i, scale=0.02))
        folders[f"t{i}"] = tmp_path / f"t{i}"
        expert.save_pretrained(folders[f"t{i}"])
        tok.save(str(folders[f"t{i}"] / "tokenizer.json"))
        argv = ["stats-files", "--model", str(folders[f"t{i}"]), "--texts", str(tmp_path / "texts.txt"),
                "--examples", "10", "--max-length", "16", "--batch-size", "4", "--layers-per-pass", "2",
                "--out", str(tmp_path / f"t{i}.stats.safetensors")]
        assert main(argv) == 0, capsys.readouterr().err
        arrays = encode(tok, texts, None, 16, 1)
        batches = [{k: torch.from_numpy(v[j:j + 4].astype("int64")) for k, v in arrays.items()} for j in (0, 4, 8)]
        stats[f"t{i}"] = collect_token_stats(expert.eval(), batches, DEC)
        written = TaskStats.from_tensors(load_tensors(tmp_path / f"t{i}.stats.safetensors"))
        assert set(written.gram) == set(stats[f"t{i}"].gram) and "lm_head.weight" in written.gram  # the tied role
        assert all(torch.equal(written.gram[k], stats[f"t{i}"].gram[k]) for k in written.gram)
    base.save_pretrained(tmp_path / "base")
    argv = ["merge-files", "--method", "lot", "--base", str(tmp_path / "base/model.safetensors"), "--set",
            "lambda=1.0", "--out", str(tmp_path / "lot.safetensors")]
    for t, folder in folders.items():
        argv += ["--expert", f"{t}={folder / 'model.safetensors'}",
                 "--stats", f"{t}={tmp_path / f'{t}.stats.safetensors'}"]
    assert main(argv) == 0
    pre = load_tensors(tmp_path / "base/model.safetensors")
    experts = {t: load_tensors(f / "model.safetensors") for t, f in folders.items()}
    whole = merge("lot", pre, experts, stats=stats, family=DEC, **{"lambda": 1.0})
    save_tensors(tmp_path / "whole.safetensors", whole, {"method": "lot"})
    assert (tmp_path / "lot.safetensors").read_bytes() == (tmp_path / "whole.safetensors").read_bytes()
    assert main(["stats-files", "--model", str(folders["t0"]), "--texts", str(tmp_path / "texts.txt"),
                 "--examples", "11", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "texts.txt: 10 non-empty lines, 11 examples asked" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_sharded_checkpoints_and_folders_merge_as_their_single_files(tmp_path, capsys):
    """A model saved in shards (model.safetensors.index.json) or given as its folder is read as the single file:
    the same merged bytes; a shard index naming a file elsewhere, or a tensor its shard lacks, is one line."""
    import transformers as tf

    from mergeflow.cli import main
    from mergeflow.families.hf_folder import load

    config = tf.LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32,
                            tie_word_embeddings=False)
    torch.manual_seed(0)
    models = {name: tf.LlamaForCausalLM(config) for name in ("base", "t0", "t1")}
    for name, model in models.items():
        model.save_pretrained(tmp_path / "whole" / name)
        model.save_pretrained(tmp_path / "sharded" / name, max_shard_size="8KB")
    assert len(list((tmp_path / "sharded/base").glob("model-*.safetensors"))) > 2
    outs = []
    for layout, pick in (("whole", lambda f: f / "model.safetensors"), ("sharded", lambda f: f),
                         ("index", lambda f: f / "model.safetensors.index.json")):
        root = tmp_path / ("whole" if layout == "whole" else "sharded")
        outs.append(tmp_path / f"{layout}.safetensors")
        argv = ["merge-files", "--method", "ties", "--base", str(pick(root / "base")), "--set", "alpha=0.5",
                "--out", str(outs[-1])]
        for t in ("t0", "t1"):
            argv += ["--expert", f"{t}={pick(root / t)}"]
        assert main(argv) == 0, capsys.readouterr().err
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()
    sharded = load(tmp_path / "sharded/t0")  # the folder loader reads shards too
    assert all(torch.equal(v, models["t0"].state_dict()[k]) for k, v in sharded.state_dict().items())
    capsys.readouterr()
    index = tmp_path / "sharded/t1/model.safetensors.index.json"
    original = json.loads(index.read_text())
    key, shard = next(iter(original["weight_map"].items()))
    for weight_map, words in (({**original["weight_map"], key: "../base/" + shard}, "is not a file name in its "
                               "folder"), ({**original["weight_map"], "model.norm.weight": shard}, "which does not "
                                           "hold it")):
        index.write_text(json.dumps({**original, "weight_map": weight_map}))
        argv = ["merge-files", "--method", "task_arithmetic", "--base", str(tmp_path / "sharded/base"), "--expert",
                f"t1={tmp_path / 'sharded/t1'}", "--out", str(tmp_path / "bad.safetensors")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's carriage returns
        assert err.startswith("mergeflow merge-files: error: expert 't1'") and words in err, err
    assert not (tmp_path / "bad.safetensors").exists()


def test_a_merge_into_a_folder_loads_with_from_pretrained_and_never_replaces_yours(tmp_path, capsys):
    import transformers as tf

    from mergeflow.cli import main
    from mergeflow.io import load_tensors

    config = tf.LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32,
                            tie_word_embeddings=True)
    torch.manual_seed(0)
    for name in ("base", "t0", "t1"):
        tf.LlamaForCausalLM(config).save_pretrained(tmp_path / name)
    (tmp_path / "base/tokenizer_config.json").write_text("{}")
    argv = ["merge-files", "--method", "task_arithmetic", "--base", str(tmp_path / "base"), "--set", "alpha=0.4",
            "--expert", f"t0={tmp_path / 't0'}", "--expert", f"t1={tmp_path / 't1'}"]
    assert main([*argv, "--out", str(tmp_path / "merged")]) == 0
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == ["config.json", "generation_config.json",
                                                                      "model.safetensors", "tokenizer_config.json"]
    assert main([*argv, "--out", str(tmp_path / "merged.safetensors")]) == 0
    assert (tmp_path / "merged/model.safetensors").read_bytes() == (tmp_path / "merged.safetensors").read_bytes()
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # transformers reads it as it is
    merged = load_tensors(tmp_path / "merged.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in merged.items())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    capsys.readouterr()
    (tmp_path / "yours").mkdir()
    (tmp_path / "yours/notes.txt").write_text("keep")
    assert main([*argv, "--out", str(tmp_path / "yours")]) == 2
    assert "yours: exists and is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "yours/notes.txt").read_text() == "keep" and not list(tmp_path.glob(".yours.*"))
