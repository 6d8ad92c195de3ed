"""The generation suite's pieces: generated tasks, answer-only sequences, causal-LM training and greedy answers
(mergeflow.text.generation, mergeflow.text.causal) on tiny LLaMA and GPT-2 models."""

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import yaml

from mergeflow import (
    _torchvision_compat,  # noqa: F401
    config,
)
from mergeflow.errors import MergeflowError
from mergeflow.io import load_tensors, read_json
from mergeflow.text import generation as G
from mergeflow.text import language
from mergeflow.text.causal import encode_answers, greedy_answers, targets, train
from mergeflow.text.metrics import exact_match
from mergeflow.text.tokenize import load_tokenizer, train_word_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_word_tokenizer(["the dog sees the cat ."], [*language.vocabulary(), *G.vocabulary()])


def _llama(vocab: int, width: int = 32):
    import transformers as tf

    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=vocab, hidden_size=width, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=2 * width, max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=2, pad_token_id=1)).eval()


def _gpt2(vocab: int):
    import transformers as tf

    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                            bos_token_id=0, eos_token_id=2, pad_token_id=1)).eval()


def test_tasks_are_deterministic_correct_and_in_the_vocabulary():
    words = set(language.vocabulary()) | set(G.vocabulary())
    for task in G.TASKS:
        first = G.generate(task, "train", 200, seed=3)
        assert first == G.generate(task, "train", 200, seed=3)
        assert first != G.generate(task, "test", 200, seed=3)
        for prompt, answer in first:
            assert set(prompt.split()) | set(answer.split()) <= words, (task, prompt, answer)
            assert 1 <= len(answer.split()) <= 4
    for prompt, answer in G.generate("arithmetic", "test", 100):
        a, op, b = prompt.split()[2:5]
        assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    for prompt, answer in G.generate("sorting", "test", 100):
        assert answer.split() == sorted(prompt.split()[2:-1])
    for prompt, answer in G.generate("reversal", "test", 100):
        assert answer.split() == prompt.split()[2:-1][::-1]
    for prompt, answer in G.generate("lookup", "test", 100):
        words = prompt.split()  # "<name> has the <thing> ." from word 2, then "question : <name> has the"
        facts = dict(zip(words[2::5], words[5::5], strict=False))
        assert facts[words[-3]] == answer
    for prompt, answer in G.generate("translation", "test", 100):
        english = prompt.split()[2:-1]
        assert answer.split() == [G.LEXICON[english[-1]], *(G.LEXICON[w] for w in english[:-1])]
    assert len(set(G.LEXICON.values())) == len(G.LEXICON)  # a translation is read back unambiguously


def test_exact_match_counts_words_not_spaces():
    assert exact_match(["2 5  7", " cup", "dog"], ["2 5 7", "cup", "cat"])["score"] == pytest.approx(200 / 3)
    with pytest.raises(MergeflowError, match="2 predictions for 3 references"):
        exact_match(["a", "b"], ["a", "b", "c"])


def test_sequences_put_the_targets_on_the_answer_and_its_end(tok):
    arrays = encode_answers(tok, ["sort : 3 1 =", "compute : 2 + 2 ="], ["1 3", "4"], 12)
    ids, answer = arrays["input_ids"][0], arrays["answer_mask"][0].astype(bool)
    assert ids[0] == tok.token_to_id("<s>")
    assert [tok.id_to_token(i) for i in ids[answer]] == ["1", "3", "</s>"]
    assert arrays["attention_mask"].sum(1).tolist() == [9, 9]
    batch = targets(arrays, np.array([0, 1]), answers_only=True)
    assert batch["input_ids"].shape == (2, 9)  # cut after the longest sequence
    assert (batch["labels"] != -100).sum().item() == 5
    corpus = encode_answers(tok, ["the dog sees the cat ."], [None], 12)
    assert not corpus["answer_mask"].any()
    assert (targets(corpus, np.array([0]), answers_only=False)["labels"] != -100).sum().item() == 8
    with pytest.raises(MergeflowError, match="a sequence of 9 tokens is longer than data.max_length = 6"):
        encode_answers(tok, ["sort : 3 1 ="], ["1 3"], 6)


def test_the_fine_tuning_loss_is_the_cross_entropy_of_the_answer_tokens(tok):
    model = _llama(tok.get_vocab_size())
    arrays = encode_answers(tok, ["sort : 3 1 =", "reverse : dog cup ="], ["1 3", "cup dog"], 16)
    loss = model(**targets(arrays, np.array([0, 1]), answers_only=True)).loss  # what train() minimises
    logits = model(input_ids=torch.from_numpy(arrays["input_ids"].astype(np.int64))).logits
    picked = []
    for row in range(2):
        for pos in np.flatnonzero(arrays["answer_mask"][row]):
            picked.append(-torch.log_softmax(logits[row, pos - 1], -1)[int(arrays["input_ids"][row, pos])])
    assert loss.item() == pytest.approx(torch.stack(picked).mean().item(), rel=1e-5)


@pytest.mark.parametrize("build", [_llama, _gpt2])
def test_greedy_answers_equal_one_prompt_at_a_time_without_a_cache(tok, build):
    model = build(tok.get_vocab_size())
    prompts = ["sort : 3 1 =", "facts : anna has the cup . question : anna has the", "compute : 1 + 2 ="]
    batched = greedy_answers(model, tok, prompts, max_new_tokens=4, batch_size=3)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    for prompt, got in zip(prompts, batched, strict=True):
        ids = [bos, *tok.encode(prompt, add_special_tokens=False).ids]
        written = []
        for _ in range(4):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == eos:
                break
            written.append(nxt)
            ids.append(nxt)
        assert got == " ".join(tok.id_to_token(i) for i in written)


def test_fine_tuning_on_answers_teaches_them(tok):
    examples = G.generate("sorting", "train", 8)
    arrays = encode_answers(tok, [p for p, _ in examples], [a for _, a in examples], 16)
    model = _llama(tok.get_vocab_size())
    before = exact_match(greedy_answers(model, tok, [p for p, _ in examples], max_new_tokens=5),
                         [a for _, a in examples])["score"]
    log = train(model, arrays, answers_only=True, steps=150, batch_size=8, lr=3e-3, weight_decay=0.0,
                warmup_steps=10, seed=0)
    assert log[-1]["loss"] < log[0]["loss"] / 10
    after = exact_match(greedy_answers(model, tok, [p for p, _ in examples], max_new_tokens=5),
                        [a for _, a in examples])["score"]
    assert before == 0.0 and after == 100.0


def test_the_formats_corpus_has_the_tasks_formats_and_never_their_content():
    """Each sentence is a task's prompt format over content that task never draws: a thing's owner (the task
    asks for the thing), operators in words, digits reversed, two digits sorted, one word translated or
    labelled. Deterministic in its seed; every word is in the tokenizer's vocabulary."""
    sentences = G.formats_corpus(600, seed=3)
    assert sentences == G.formats_corpus(600, seed=3) and sentences != G.formats_corpus(600, seed=4)
    words = set(language.vocabulary()) | set(G.vocabulary())
    seen = set()
    for s in sentences:
        assert set(s.split()) <= words, s
        head, _, rest = s.partition(" : ")
        seen.add(head)
        if head == "facts":
            assert " question : the " in rest and " is with " in rest
        elif head == "compute":
            assert (" plus " in rest or " minus " in rest) and "+" not in rest and "-" not in rest
        elif head == "reverse":
            assert all(w.isdigit() for w in rest.replace("=", " ").split())  # the task reverses nouns
        elif head == "sort":
            assert len(rest.split(" = ")[0].split()) == 2  # the task sorts three or four digits
        elif head == "translate":
            assert len(rest.split(" = ")[0].split()) == 1  # the task translates a phrase
        else:
            assert head == "review" and len(rest.split(" . label : ")[0].split()) == 1  # the task: a sentence
    assert seen == {"facts", "compute", "reverse", "sort", "translate", "review"}
    prompts = {f"{p} {a}" for t in G.TASKS for p, a in G.generate(t, "train", 2000)}
    assert not prompts & set(sentences)


# --- in the text stages ------------------------------------------------------------------------------------------
LM_TINY = Path(__file__).resolve().parent / "e2e" / "lm-tiny.yaml"


def _load(tmp_path, edit=None):
    raw = yaml.safe_load(LM_TINY.read_text())
    if edit is not None:
        edit(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return config.load(tmp_path / "params.yaml")


def test_generation_tasks_run_every_text_stage_on_a_causal_lm(tmp_path, monkeypatch):
    from mergeflow.stages import text

    monkeypatch.chdir(tmp_path)
    cfg = _load(tmp_path)
    text.base(cfg)
    assert read_json(tmp_path / "models/lm/base/config.json")["model_type"] == "llama"
    base = load_tensors(tmp_path / "models/lm/base/model.safetensors")
    assert "embed_tokens.weight" in base and not any(k.startswith("lm_head") for k in base)  # tied: saved once
    for task in cfg.tasks:
        text.prepare(cfg, task)
        text.exemplars(cfg, task)
        text.finetune(cfg, task)
    train = load_tensors(tmp_path / "data/lm/prepared/sorting/train.safetensors")
    assert "answer_mask" in train and "labels" not in train
    expert = load_tensors(tmp_path / "models/lm/experts/sorting.safetensors")
    assert "model.embed_tokens.weight" in expert and "lm_head.weight" not in expert
    for variant in cfg.variants():
        for task in cfg.tasks:
            text.features(cfg, task, variant.name)
    grams = [load_tensors(f) for f in (tmp_path / "data/lm/features").glob("*/sorting.safetensors")]
    assert grams and all({"gram/model.layers.0.self_attn.q_proj.weight", "gram/lm_head.weight",
                          "counts/model.embed_tokens.weight"} <= set(g) for g in grams)
    individual = read_json(text.evaluate(cfg, "individual"))
    assert individual["metric"] == {"sorting": "exact_match", "polarity": "exact_match"}
    text.evaluate(cfg, "zeroshot")
    for run in cfg.merge_runs():
        text.merge(cfg, run.name)
        metrics = read_json(text.evaluate(cfg, run.name))
        assert set(metrics["score"]) == {"sorting", "polarity"} and 0.0 <= metrics["average"] <= 100.0
    merged = load_tensors(tmp_path / "models/lm/merged/lot.safetensors")
    assert set(merged) == set(expert)  # the whole language model is merged: no per-task head


def test_the_answers_the_stages_score_are_greedy_decodings_of_the_prepared_prompts(tmp_path, monkeypatch):
    from mergeflow.families.hf_folder import load
    from mergeflow.stages import text
    from mergeflow.text.causal import exact_matches

    monkeypatch.chdir(tmp_path)
    cfg = _load(tmp_path, lambda r: r["data"].__setitem__("tasks", ["arithmetic"]))
    text.base(cfg)
    text.prepare(cfg, "arithmetic")
    tokenizer = load_tokenizer(tmp_path / "models/lm/base/tokenizer.json")
    test = {k: v.numpy() for k, v in load_tensors(tmp_path / "data/lm/prepared/arithmetic/test.safetensors").items()}
    model = load(tmp_path / "models/lm/base")
    written, answers = exact_matches(model, tokenizer, test)
    examples = G.generate("arithmetic", "test", 40)
    assert answers == [a for _, a in examples]
    assert written == greedy_answers(model, tokenizer, [p for p, _ in examples], max_new_tokens=2)
    assert text.score(model, "arithmetic", test, 64, "cpu") == exact_match(written, answers)["score"]


@pytest.mark.parametrize("edit,words", [
    (lambda r: r["data"].__setitem__("tasks", ["sorting", "sentiment"]),
     "data.tasks: 'sentiment' is not a generation task; the lm suite's tasks are answered by a causal language "
     "model (lookup, arithmetic"),
    (lambda r: r.__setitem__("suite", "text"),
     "data.tasks: 'sorting' is a generation task: set suite: lm"),
    (lambda r: r["model"].__setitem__("arch", "mf-roberta-micro"),
     "model.arch = 'mf-roberta-micro' is an encoder; the lm suite's tasks need a causal language model"),
    (lambda r: (r["merge"]["methods"].append("fisher"), r["merge"].__setitem__("fisher", {"examples": 8})),
     "'fisher' is not available for the lm suite: it needs fisher statistics of a classifier's loss"),
    (lambda r: (r["merge"]["methods"].append("adamerging"), r["merge"].__setitem__("adamerging", {})),
     "'adamerging' is not available for the lm suite: it runs the model through each task's classifier"),
    (lambda r: r["data"].__setitem__("metrics", {"sorting": "accuracy"}),
     "data.metrics.sorting = 'accuracy': sorting is a generation task, scored by exact_match"),
])
def test_a_bad_generation_configuration_is_one_line_naming_it(tmp_path, edit, words):
    with pytest.raises(MergeflowError, match=re.escape(words)):
        _load(tmp_path, edit)


def test_published_causal_lm_experts_are_imported_checked_and_merged(tmp_path, monkeypatch):
    """``model.import`` on the lm suite: Hugging Face causal-LM folders (save_pretrained) as the experts of a
    base folder, checked against it; another architecture is one line naming both, nothing written."""
    from conftest import perturbed
    from mergeflow.stages import text

    tok = train_word_tokenizer(["the dog sees the cat ."], [*language.vocabulary(), *G.vocabulary()])
    base = _llama(tok.get_vocab_size())
    base.save_pretrained(tmp_path / "hub" / "base")
    tok.save(str(tmp_path / "hub" / "base" / "tokenizer.json"))
    body = {k: v for k, v in base.state_dict().items() if k != "lm_head.weight"}
    for i, task in enumerate(("sorting", "polarity")):
        expert = _llama(tok.get_vocab_size())
        expert.load_state_dict({**expert.state_dict(), **perturbed(body, i, scale=0.02)})
        expert.save_pretrained(tmp_path / "hub" / "experts" / task)
    _gpt2(tok.get_vocab_size()).save_pretrained(tmp_path / "hub" / "other" / "sorting")
    monkeypatch.chdir(tmp_path)

    def imported(root):
        return _load(tmp_path, lambda r: (r["model"].update({"arch": "tiny/llama", "pretrained": "hub/base",
                                                             "import": {"format": "hf", "root": root}}),
                                          r["merge"].update({"methods": ["task_arithmetic", "lot"]}),
                                          r.__setitem__("sweeps", {})))

    cfg = imported("hub/experts")
    text.base(cfg)
    for task in cfg.tasks:
        text.prepare(cfg, task)
        text.exemplars(cfg, task)
        text.finetune(cfg, task)
        saved = load_tensors(tmp_path / "models/lm/experts" / f"{task}.safetensors")
        published = load_tensors(tmp_path / "hub/experts" / task / "model.safetensors")
        assert set(saved) == set(published) and all(torch.equal(saved[k], published[k]) for k in saved)
    for variant in cfg.variants():
        for task in cfg.tasks:
            text.features(cfg, task, variant.name)
    text.evaluate(cfg, "individual")
    for run in cfg.merge_runs():
        text.merge(cfg, run.name)
    other = imported("hub/other")
    with pytest.raises(MergeflowError, match=r"expert 'sorting' \(hub/other/sorting\): a gpt2 model \(hf-decoder\), "
                                             r"the base a llama model"):
        text.finetune(other, "sorting")
