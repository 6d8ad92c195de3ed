"""The text suite's stages (``suite: text``): a RoBERTa/BERT (or GPT-2) base, one sequence-classification
expert per task, token statistics, merges of the body (each task keeps its expert's head, the GLUE merging
protocol) and every task scored by its own metric (its GLUE headline unless ``data.metrics`` names another).

Artifacts live under ``data/text/``, ``models/text/`` and ``reports/text/`` (:data:`mergeflow.paths.TEXT`);
the merge runs, statistics variants and scale choice are the vision suite's (the same registry, the same
``merge`` and ``sweeps`` blocks), applied through the base's family adapter (``hf-encoder`` for BERT/RoBERTa,
``hf-decoder`` for GPT-2 classifiers: its ``config.json``'s ``model_type`` says which).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mergeflow import paths
from mergeflow.config import Config, Variant
from mergeflow.device import resolve
from mergeflow.errors import MergeflowError
from mergeflow.families import Family
from mergeflow.families.hf_folder import family_of, read_folder, with_padding
from mergeflow.features.exemplars import sample_exemplars
from mergeflow.features.stats import TaskStats
from mergeflow.features.tokens import token_fisher, token_gradient
from mergeflow.io import (
    hash_file,
    hash_file_cached,
    load_metadata,
    load_tensors,
    read_json,
    replace_dir,
    save_tensors,
    write_json,
)
from mergeflow.merge import METHODS, check_inputs
from mergeflow.merge import merge as do_merge
from mergeflow.scale_choice import choose_scale, scale_rank
from mergeflow.text import causal, generation, language, offline
from mergeflow.text.models import TEXT_ARCHS, imported_folders, shipped_files
from mergeflow.text.prepared import load_text_split, prepare_text_task
from mergeflow.text.task_data import TokenTaskData, token_task_data
from mergeflow.text.tasks import get_text_task, scored_here, task_metric
from mergeflow.text.tokenize import check_matches, encode, load_tokenizer, mask_id, train_word_tokenizer
from mergeflow.text.train import finetune as train_classifier
from mergeflow.text.train import predict, pretrain_mlm
from mergeflow.workers import cpu_cores, run_jobs, threads_per_job
from mergeflow.workspace import is_path_like

# The folders of the suite the stages work in: data/text, models/text, reports/text for the text suite, the same
# under lm/ for the generation suite (mergeflow.paths.TEXT_LAYOUTS). Each stage entry sets it from its
# configuration (_enter): a stage is one process running one suite, and the helpers read it from here.
L = paths.TEXT


def _enter(cfg: Config) -> None:
    global L
    L = paths.TEXT_LAYOUTS[cfg.suite]


def _hf() -> Family:
    """The base's family adapter (hf-encoder for BERT/RoBERTa, hf-decoder for GPT-2 and LLaMA-style
    classifiers), from its ``config.json``'s ``model_type``."""
    return family_of(_config(), str(L.base / "config.json"))


def _generate_options(cfg: Config) -> dict:
    g = cfg.raw["data"]["generate"]
    return {"train": g["train"], "test": g["test"], "seed": g["seed"]}


def _raw_folder(cfg: Config, task: str) -> Path | None:
    """Where a GLUE task's files are read (your copy, read in place, or what ``fetch`` downloaded);
    None for a generated task."""
    if get_text_task(task).kind == "offline":
        return None
    data = cfg.raw["data"]
    if data.get("local_dir") is not None and not data["download"]:
        return Path(data["local_dir"]) / task
    return Path(data["raw_dir"]) / task


def fetch(cfg: Config, tasks: list[str]) -> list[Path]:
    """Download every GLUE task of ``tasks`` into ``<raw_dir>/<task>/`` (generated tasks need nothing: they are
    drawn when prepared; your copies in ``data.local_dir`` are read in place)."""
    _enter(cfg)
    from mergeflow.text.glue import download_glue

    out = []
    for task in tasks:
        if get_text_task(task).kind != "glue" or not cfg.raw["data"]["download"]:
            continue
        target = Path(cfg.raw["data"]["raw_dir"]) / task
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=target.parent))
        try:
            download_glue(task, tmp / "data")
            replace_dir(tmp / "data", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out.append(target)
    return out


# --- base ------------------------------------------------------------------------------------------------------
def _pretrained_base(cfg: Config, steps: int | None = None):
    """Pre-training of ``model.arch`` on the generated corpus (not the tasks' sentences), with a word-level
    tokenizer trained on that corpus: masked LM for an encoder, next-token prediction for a decoder (whose
    tokenizer also knows the generation tasks' words, :func:`mergeflow.text.generation.vocabulary`, which the
    corpus never uses). Returns the body's tensors, its config, the tokenizer, the log."""
    from mergeflow.families import family_for_model_type

    p, arch = cfg.raw["pretrain"], cfg.raw["model"]["arch"]
    family = family_for_model_type(TEXT_ARCHS[arch]["model_type"], f"model.arch {arch}")
    decoder = family.name == "hf-decoder"
    # two thirds single sentences, one third sentence pairs (offline.pair_corpus), as BERT pre-trains on pairs
    n_pairs = int(p["corpus_size"]) // 3
    corpus = offline.corpus(int(p["corpus_size"]) - n_pairs, seed=int(p["corpus_seed"]))
    pairs = offline.pair_corpus(n_pairs, seed=int(p["corpus_seed"]))
    words = [*language.vocabulary(), *(generation.vocabulary() if decoder else [])]
    tokenizer = train_word_tokenizer([*corpus, *(f"{a} {b}" for a, b in pairs)], words)
    config = {**TEXT_ARCHS[arch], "vocab_size": tokenizer.get_vocab_size()}
    torch.manual_seed(int(p["seed"]))
    length = int(cfg.raw["data"]["max_length"])
    schedule = {"steps": int(p["steps"]), "batch_size": int(p["batch_size"]), "lr": float(p["lr"]),
                "weight_decay": float(p["weight_decay"]), "warmup_steps": int(p["warmup_steps"]),
                "seed": int(p["seed"]), "device": resolve(cfg.device), "stop_after": steps, "log_every": 1}
    skills = generation.skills_corpus(int(p.get("skills_size") or 0), seed=int(p["corpus_seed"])) if decoder else []
    formats = generation.formats_corpus(int(p.get("formats_size") or 0), seed=int(p["corpus_seed"])) if decoder else []
    if decoder:  # a pair is one text: a causal model reads it left to right
        lm = family.build(config)
        texts = [*corpus, *(f"{a} {b}" for a, b in pairs), *skills, *formats]
        log = causal.train(lm, causal.encode_answers(tokenizer, texts, [None] * len(texts), length),
                           answers_only=False, **schedule)
    else:
        from mergeflow.families.hf_encoder import _transformers

        tf = _transformers()
        lm = tf.AutoModelForMaskedLM.from_config(tf.AutoConfig.for_model(
            **{k: v for k, v in config.items() if k != "model_type"}, model_type=config["model_type"]))
        special = sorted({tokenizer.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")})
        singles = encode(tokenizer, corpus, None, length)
        joined = encode(tokenizer, [a for a, _ in pairs], [b for _, b in pairs], length) if pairs else singles
        arrays = {k: np.concatenate([singles[k], joined[k]]) if pairs else singles[k] for k in singles}
        log = pretrain_mlm(lm, arrays, special_ids=special, mask_token=mask_id(tokenizer), **schedule)
    prefix = lm.base_model_prefix + "."
    # the body (a decoder's tied output projection is its token table, saved once)
    body = {k[len(prefix):]: v.detach().cpu().contiguous() for k, v in lm.state_dict().items()
            if k.startswith(prefix) and family.unit(k).kind != "excluded"}
    digest = hashlib.sha256("\n".join([*corpus, *(f"{a}\t{b}" for a, b in pairs), *skills, *formats]).encode()
                            ).hexdigest()
    corpus_record = {"count": len(corpus), "pairs": len(pairs), **({"skills": len(skills)} if skills else {}),
                     **({"formats": len(formats)} if formats else {}),
                     "seed": int(p["corpus_seed"]), "sha256": digest}
    record = {"arch": arch, "config": config, "pretrain": dict(p), "corpus": corpus_record,
              "max_length": int(cfg.raw["data"]["max_length"]),
              "tokenizer_words": tokenizer.get_vocab_size(), "loss": [e["loss"] for e in log]}
    return body, config, tokenizer, record


def pretrain(cfg: Config, tag: str, out_dir: Path | None = None, steps: int | None = None) -> Path:
    """``mergeflow pretrain`` for a text architecture: weights, tokenizer and log the project can ship
    (``model.pretrained: <tag>`` loads them); ``steps`` stops early, to check a run starts as recorded."""
    body, _, tokenizer, record = _pretrained_base(cfg, steps)
    files = shipped_files(cfg.raw["model"]["arch"], tag, out_dir)
    files["weights"].parent.mkdir(parents=True, exist_ok=True)
    save_tensors(files["weights"], body)
    with tempfile.TemporaryDirectory(dir=files["tokenizer"].parent) as tmp:
        tokenizer.save(str(Path(tmp) / "tokenizer.json"))
        Path(tmp, "tokenizer.json").replace(files["tokenizer"])
    write_json(files["log"], {**record, "weights_sha256": hash_file(files["weights"]),
                              "tokenizer_sha256": hash_file(files["tokenizer"])})
    return files["weights"]


def base(cfg: Config) -> Path:
    """``models/text/base/``: ``model.safetensors`` (the encoder body), ``config.json``, ``tokenizer.json``
    and ``log.json``, pre-trained here, shipped, packaged or read from a Hugging Face folder."""
    _enter(cfg)
    from mergeflow.families.hf_folder import shapes
    from mergeflow.models.packaged import extract, get_packaged

    arch, pretrained = cfg.raw["model"]["arch"], cfg.raw["model"]["pretrained"]
    L.base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".base.", dir=L.base.parent))
    try:
        if pretrained is None:
            body, config, tokenizer, log = _pretrained_base(cfg)
            save_tensors(tmp / "model.safetensors", body)
            tokenizer.save(str(tmp / "tokenizer.json"))
        elif pretrained == "packaged":
            extract(get_packaged(arch), tmp)
            config, log = read_json(tmp / "config.json"), {"arch": arch, "pretrained": "packaged"}
        elif is_path_like(pretrained) or Path(pretrained).is_dir():
            folder = _hf_folder(cfg)
            config, body = read_folder(folder)
            if not (folder / "tokenizer.json").is_file():
                raise MergeflowError(f"{folder / 'tokenizer.json'}: not found (a text base folder needs its tokenizer "
                                     "in the tokenizers library's format)")
            save_tensors(tmp / "model.safetensors", body)
            shutil.copyfile(folder / "tokenizer.json", tmp / "tokenizer.json")
            log = {"arch": arch, "pretrained": pretrained, "files": _folder_hashes(folder)}
        else:
            source = shipped_files(arch, pretrained)
            for file in source.values():
                if not file.is_file():
                    raise MergeflowError(f"{file}: not found (model.pretrained = {pretrained!r}; a text base is a "
                                         "tag the project ships, null, packaged or a folder)")
            recorded = read_json(source["log"])
            config = recorded.get("config", recorded)
            for key, name in (("weights", "weights_sha256"), ("tokenizer", "tokenizer_sha256")):
                if name in recorded and hash_file(source[key]) != recorded[name]:
                    raise MergeflowError(f"{source[key]}: its SHA-256 differs from the one {source['log']} records")
            shutil.copyfile(source["weights"], tmp / "model.safetensors")
            shutil.copyfile(source["tokenizer"], tmp / "tokenizer.json")
            log = {"arch": arch, "pretrained": pretrained, "checkpoint": str(source["weights"]),
                   "checkpoint_sha256": hash_file(source["weights"])}
        config = with_padding(config)
        family_of(config, str(tmp / "config.json")).check_config(config, shapes(tmp / "model.safetensors"),
                                                                 str(tmp / "config.json"))
        check_matches(load_tokenizer(tmp / "tokenizer.json"), int(config["vocab_size"]), str(tmp / "tokenizer.json"))
        write_json(tmp / "config.json", config)
        write_json(tmp / "log.json", {**log, "weights_sha256": hash_file(tmp / "model.safetensors"),
                                      "tokenizer_sha256": hash_file(tmp / "tokenizer.json")})
        replace_dir(tmp, L.base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return L.base


HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json"]


def _folder_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of the files of a Hugging Face folder that a base or an expert is read from."""
    return {name: hash_file(folder / name) for name in [*HUB_FILES, "pytorch_model.bin"] if (folder / name).is_file()}


def _hf_folder(cfg: Config) -> Path:
    """``model.pretrained``'s Hugging Face folder; with ``data.download``, ``model.arch`` (a Hub id) downloaded
    into it first when it is not there."""
    arch, folder = cfg.raw["model"]["arch"], Path(cfg.raw["model"]["pretrained"])
    if not folder.is_dir():
        if not cfg.raw["data"]["download"]:
            raise MergeflowError(f"{folder}: not found (model.pretrained); download {arch} there with `huggingface-cli "
                                 f"download {arch} {' '.join(HUB_FILES)} --local-dir {folder}`, or set data.download: "
                                 "true")
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=arch, local_dir=str(folder), allow_patterns=HUB_FILES)
    return folder


def _config() -> dict:
    return read_json(L.base / "config.json")


def _task_model(task: str):
    """``task``'s model holding the base's body: a sequence classifier (its head newly initialised), or for a
    generation or calibration task the base's causal language model."""
    from mergeflow.families.hf_folder import load

    t = get_text_task(task)
    if t.causal and _hf().name != "hf-decoder":
        raise MergeflowError(f"{L.base / 'config.json'}: a {_config().get('model_type')} model; {t.kind} task "
                             f"{task!r} needs a causal language model as the base")
    return load(L.base, num_labels=None if t.causal else t.num_outputs)


def _weights(model) -> dict[str, torch.Tensor]:
    """A model's state dict with each tensor once: a tied output projection is its token table (the file
    holds the table, as a Hugging Face checkpoint does; loading ties it again)."""
    seen, out = set(), {}
    for key, value in model.state_dict().items():
        if value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            out[key] = value
    return out


# --- data --------------------------------------------------------------------------------------------------------
def prepare(cfg: Config, task: str) -> Path:
    """``data/text/prepared/<task>/{train,val,test}.safetensors``: token ids with the base's tokenizer."""
    _enter(cfg)
    d = cfg.raw["data"]
    check_matches(load_tokenizer(L.tokenizer()), int(_config()["vocab_size"]), str(L.tokenizer()))
    target = L.prepared(task)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=target.parent))
    try:
        sizes = prepare_text_task(task, _raw_folder(cfg, task), tmp, L.tokenizer(), max_length=int(d["max_length"]),
                                  val_fraction=d["val_fraction"], max_val=d["max_val"], seed=d["split_seed"],
                                  options=_generate_options(cfg), pad_id=_config().get("pad_token_id"),
                                  metric=task_metric(cfg.raw, task))
        write_json(tmp / "manifest.json", {"task": task, "sizes": sizes,
                                           "tokenizer_sha256": hash_file(L.tokenizer())})
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _split(task: str, split: str) -> dict[str, np.ndarray]:
    return load_text_split(L.prepared(task), split, hash_file_cached(L.tokenizer()))


def exemplars(cfg: Config, task: str, seed: int | None = None) -> Path:
    """``data/text/exemplars/<task>.json``: a seeded list of ``exemplars.pool`` train indices."""
    _enter(cfg)
    seed = cfg.exemplars.seed if seed is None else seed
    n_train = int(read_json(L.prepared(task) / "manifest.json")["sizes"]["train"])
    indices = sample_exemplars(n_train, cfg.exemplars.pool, seed)
    out = L.exemplars(task) if seed == cfg.exemplars.seed else L.exemplars_dir / f"{task}.seed{seed}.json"
    write_json(out, {"task": task, "seed": seed, "count": len(indices), "split": "train", "indices": indices})
    return out


# --- experts -----------------------------------------------------------------------------------------------------
def _inputs(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k not in ("labels", "answer_mask")}


def _size(arrays: dict[str, np.ndarray]) -> int:
    return len(arrays["input_ids"])


def score(model, task: str, arrays: dict[str, np.ndarray], batch_size: int, device, metric: str | None = None
          ) -> float:
    """``task``'s headline (percent; ``metric``, else its GLUE metric) of ``model`` on a prepared split: a
    generation task's answers written by greedy decoding."""
    t = get_text_task(task)
    if t.calibration:
        raise MergeflowError(f"{task}: a calibration task is scored outside mergeflow (its texts serve the "
                             "statistics only)")
    if t.generative:
        written, answers = causal.exact_matches(model, load_tokenizer(L.tokenizer()), arrays, batch_size=batch_size,
                                                device=device)
        return t.score(written, answers, metric)["score"]
    return t.score(predict(model, _inputs(arrays), batch_size=batch_size, device=device), arrays["labels"],
                   metric)["score"]


def _import_expert(cfg: Config, task: str, folder: Path) -> Path:
    """A published sequence classifier of ``task`` (a Hugging Face folder) — for a generation task, a causal
    LM — as the task's expert, checked against the base: another architecture, a body of other shapes, or a head
    of another size, is one line and nothing is written."""
    from mergeflow.families.hf_folder import load, read_config

    if get_text_task(task).causal:  # the whole language model, keyed as the base's (a tied table once)
        config = read_config(folder)
        state = _weights(load(folder)) if config.get("model_type") == _config().get("model_type") else {}
    else:
        config, state = read_folder(folder, get_text_task(task).num_outputs)
    ours = _config().get("model_type")
    if config.get("model_type") != ours:
        raise MergeflowError(f"expert {task!r} ({folder}): a {config.get('model_type')} model "
                             f"({family_of(config, str(folder)).name}), the base a {ours} model ({_hf().name}); "
                             "experts are fine-tuned from the base")
    try:  # the checks every merge makes of its inputs: keys, shapes, dtypes, finite values
        check_inputs(_pre(task), {task: _hf().merged_part(state)})
    except MergeflowError as exc:
        raise MergeflowError(str(exc).replace(f"expert {task!r}:", f"expert {task!r} ({folder}):", 1)) from None
    model = _task_model(task)
    model.load_state_dict({**model.state_dict(), **state})
    val = None  # a calibration task is scored outside mergeflow
    if not get_text_task(task).calibration:
        val = score(model.eval(), task, _split(task, "val"), cfg.evaluate.batch_size, "cpu", task_metric(cfg.raw, task))
    files = _folder_hashes(folder)
    save_tensors(L.expert(task), {k: v.contiguous() for k, v in _weights(model).items()},
                 {"task": task, "base_sha256": hash_file(L.base_weights())})
    write_json(L.expert_log(task), {"task": task, "val_score": val, "imported": str(folder), "files": files,
                                    "weights_sha256": hash_file(L.expert(task))})
    return L.expert(task)


def schedule_length(f: dict, n_train: int) -> tuple[int, int]:
    """Steps and warm-up steps of a fine-tuning run: ``epochs`` passes over the train split when given (the
    GLUE recipe's 10 epochs), else ``steps``; warm-up as ``warmup_ratio`` of them when given, else
    ``warmup_steps``."""
    epochs = f.get("epochs")
    steps = max(1, math.ceil(float(epochs) * n_train / int(f["batch_size"]))) if epochs is not None else int(f["steps"])
    ratio = f.get("warmup_ratio")
    return steps, (round(float(ratio) * steps) if ratio is not None else int(f["warmup_steps"]))


def finetune(cfg: Config, task: str) -> Path:
    """``models/text/experts/<task>.safetensors``: every weight of the base's body and a new head trained on
    the task (the GLUE recipe), and ``<task>.log.json`` with the loss curve and the validation score; with
    ``model.import``, the task's published classifier instead (:func:`_import_expert`)."""
    _enter(cfg)
    folder = imported_folders(cfg).get(task)
    if folder is not None:
        return _import_expert(cfg, task, folder)
    if get_text_task(task).calibration:
        raise MergeflowError(f"{task}: a calibration task has no training data; its expert is a published model "
                             "(model.import.tasks)")
    f = cfg.raw["finetune"]
    device = resolve(cfg.device)
    if device.type == "cpu":  # as for images: the same threads alone or beside other tasks, the same bytes
        torch.set_num_threads(threads_per_job(len(cfg.tasks)))
    # the head's initialisation: one seed per task, whatever the order tasks are trained in
    torch.manual_seed(int(f["seed"]) * 1000003 + zlib.crc32(task.encode()))
    model = _task_model(task)
    train = _split(task, "train")
    steps, warmup = schedule_length(f, _size(train))
    schedule = {"steps": steps, "batch_size": int(f["batch_size"]), "lr": float(f["lr"]),
                "weight_decay": float(f["weight_decay"]), "warmup_steps": warmup, "seed": int(f["seed"]),
                "grad_clip": float(f["grad_clip"]), "device": device}
    if get_text_task(task).generative:  # the loss on the answer's tokens only
        log = causal.train(model, train, answers_only=True, **schedule)
    else:
        log = train_classifier(model, _inputs(train), train["labels"], **schedule)
    model = model.cpu().eval()
    val = score(model, task, _split(task, "val"), cfg.evaluate.batch_size, "cpu", task_metric(cfg.raw, task))
    save_tensors(L.expert(task), {k: v.contiguous() for k, v in _weights(model).items()},
                 {"task": task, "base_sha256": hash_file(L.base_weights())})
    write_json(L.expert_log(task), {"task": task, "val_score": val, "loss": log,
                                    "weights_sha256": hash_file(L.expert(task))})
    return L.expert(task)


def finetune_tasks(cfg: Config, tasks: list[str]) -> list[Path]:
    """One expert per task: on CPU side by side in worker processes (a width-128 model keeps two threads
    busy no better than one), on a GPU one after the other in this process."""
    _enter(cfg)
    workers = 1
    if resolve(cfg.device).type == "cpu" and not imported_folders(cfg):
        workers = min(len(tasks), max(1, cpu_cores() // threads_per_job(len(cfg.tasks))))
    return run_jobs(_finetune_job, [(cfg.raw, cfg.source, task) for task in tasks], workers)


def _finetune_job(raw: dict, source: str, task: str) -> Path:
    return finetune(Config(raw, source), task)


def _pre(task: str) -> dict[str, torch.Tensor]:
    """The base body under the classifier's parameter names (what experts and merges are keyed by)."""
    return _hf().merged_part(_weights(_task_model(task)))


def load_expert(task: str) -> dict[str, torch.Tensor]:
    file = L.expert(task)
    if not file.is_file():
        raise MergeflowError(f"{file}: not found; run `mergeflow finetune --task {task}`")
    return load_tensors(file)


# --- statistics --------------------------------------------------------------------------------------------------
def _scaled(task: str, scale: float):
    """The expert's classifier at ``θ_pre + scale · T_task`` (its own head)."""
    model = _task_model(task)
    expert = load_expert(task)
    body = _hf().merged_part(_weights(model))
    new = {k: (body[k].float() + scale * (expert[k].float() - body[k].float())).to(body[k].dtype)
           if body[k].is_floating_point() else body[k] for k in body}
    model.load_state_dict({**model.state_dict(), **new, **_hf().heads(expert)})
    return model.eval()


def features(cfg: Config, task: str, variant: str) -> Path:
    """Statistics ``variant`` of ``task`` on its first n exemplars: token Grams and energies, the diagonal
    Fisher (Fisher merging) or mean absolute gradients (TATR) of the body; a grid variant is one file per
    non-zero value of ``evaluate.scale_grid``."""
    _enter(cfg)
    v = Variant.parse(variant)
    if not v.is_grid:
        return _features_at(cfg, task, v, v.scale_value, L.features(variant, task))
    for s in cfg.evaluate.scale_grid:
        if float(s) != 0.0:
            _features_at(cfg, task, v, float(s), L.features(variant, task, s))
    return L.features(variant, task).parent


def _features_at(cfg: Config, task: str, v: Variant, scale: float, out: Path) -> Path:
    ex_file = L.exemplars(task) if v.seed == cfg.exemplars.seed else L.exemplars_dir / f"{task}.seed{v.seed}.json"
    listing = read_json(ex_file, {"count": int, "indices": list})
    if v.count > listing["count"]:
        raise MergeflowError(f"variant {v.name}: {v.count} exemplars asked but {ex_file} lists {listing['count']}; "
                             "raise exemplars.pool")
    train = _split(task, "train")
    index = np.asarray(listing["indices"][:v.count], dtype=np.int64)
    if len(index) and (index.min() < 0 or index.max() >= _size(train)):
        raise MergeflowError(f"{ex_file}: indices outside the train split; rerun `mergeflow exemplars --task {task}`")
    arrays = {k: torch.from_numpy(v_[index].astype(np.int64)) for k, v_ in _inputs(train).items()}
    bs = int(cfg.features.batch_size)
    device = resolve(cfg.device)
    model = _scaled(task, scale).to(device)
    labels = torch.from_numpy(train["labels"][index]) if "labels" in train else None
    if v.kind == "gram":
        batches = ({k: t[i:i + bs] for k, t in arrays.items()} for i in range(0, len(index), bs))
        dtype = torch.float64 if cfg.features.dtype == "float64" else torch.float32
        stats = _hf().statistics(model, batches, dtype=dtype, weighting=cfg.raw["features"].get("weighting", "tokens"))
    elif v.kind == "fisher":
        stats = TaskStats(fisher=token_fisher(model, arrays, labels if cfg.features.fisher_labels else None, _hf(),
                                              seed=v.seed, device=device))
    else:
        stats = TaskStats(grad=token_gradient(model, arrays, labels, _hf(), batch_size=bs, device=device))
    meta = {"variant": v.name, "task": task, "scale": scale, "exemplars": str(ex_file),
            "exemplars_sha256": hash_file(ex_file), "base_sha256": hash_file(L.base_weights()),
            "expert_sha256": hash_file(L.expert(task))}
    save_tensors(out, stats.to_tensors(), meta)
    return out


def _load_stats(variant: str, task: str, scale: float | None) -> TaskStats:
    file = L.features(variant, task, scale)
    if not file.is_file():
        raise MergeflowError(f"{file}: not found; run `mergeflow features --variant {variant}`")
    meta = load_metadata(file)
    for key, source in (("base_sha256", L.base_weights()), ("expert_sha256", L.expert(task))):
        if meta.get(key) is not None and hash_file_cached(source) != meta[key]:
            raise MergeflowError(f"{file}: stale, computed from another {source} than the one there now; rebuild it "
                                 f"with `mergeflow features --variant {variant}`")
    return TaskStats.from_tensors(load_tensors(file), str(file))


def _run_stats(cfg: Config, run, scale: float | None = None) -> dict | None:
    if not run.variants:
        return None
    out = {}
    for t in cfg.tasks:
        parts = [_load_stats(v.name, t, scale if v.is_grid else None) for v in run.variants]
        for extra in parts[1:]:
            for field in ("gram", "sqnorm", "rows", "counts"):
                getattr(parts[0], field).update(getattr(extra, field))
        out[t] = parts[0]
    return out


# --- merge and evaluation ----------------------------------------------------------------------------------------
class _Scorer:
    """Every task's classifier built once; a body and the task's own expert head scored on a split."""

    def __init__(self, cfg: Config, tasks: list[str], split: str):
        self.models = {t: _task_model(t) for t in tasks}
        self.heads = {t: _hf().heads(load_expert(t)) for t in tasks}
        self.data = {t: _split(t, split) for t in tasks}
        self.metrics = {t: task_metric(cfg.raw, t) for t in tasks}
        self.batch_size = int(cfg.evaluate.batch_size)
        self.device = resolve(cfg.device)

    def __call__(self, body: dict[str, torch.Tensor], task: str) -> float:
        model = self.models[task]
        model.load_state_dict({**model.state_dict(), **body, **self.heads[task]})
        return score(model, task, self.data[task], self.batch_size, self.device, self.metrics[task])


def _task_data(cfg: Config, spec, hp: dict, val: _Scorer | None, experts: dict) -> TokenTaskData:
    """The classifiers and token data the methods that run the model read (AdaMerging, TALL masks,
    Consensus): each task's classifier with the pre-trained body and its expert's head (from ``experts``,
    the state dicts the merge already read)."""
    models = {}
    for t in cfg.tasks:
        model = _task_model(t)
        model.load_state_dict({**model.state_dict(), **_hf().heads(experts[t])})
        models[t] = model
    split = hp.get("unlabeled", "test")
    unlabeled = {t: _inputs(_split(t, split)) for t in cfg.tasks} if "unlabeled" in spec.uses else {}
    val_accuracy = None
    if "validation" in spec.uses:
        val = val or _Scorer(cfg, cfg.tasks, "val")

        def val_accuracy(weights, task):
            return val({k: v.detach().cpu() for k, v in weights.items()}, task)

    regression = {t for t in cfg.tasks if get_text_task(t).regression}
    return token_task_data(models, regression, spec.uses, unlabeled, split, val_accuracy, resolve(cfg.device))


def _normalised(scores: dict[str, float], experts: dict[str, float]) -> float:
    return sum(scores[t] / experts[t] if experts[t] > 0 else 0.0 for t in scores) / len(scores)


def merge(cfg: Config, run_name: str) -> Path:
    """Merge the experts' bodies with one configured run (an ``auto`` scale chosen on validation, as for the
    vision suite); ``models/text/merged/<run>.safetensors`` holds the body, the heads stay the experts'."""
    _enter(cfg)
    run = cfg.run(run_name)
    spec = METHODS[run.method]
    pre = _pre(cfg.tasks[0])
    experts = {t: load_expert(t) for t in cfg.tasks}
    hp = dict(run.hparams)
    key = spec.scale
    auto = key is not None and hp[key] == "auto"
    info = {"name": key, "value": hp.get(key) if key else None, "chosen_by": "fixed"}
    val = _Scorer(cfg, cfg.tasks, "val") if auto or "validation" in spec.uses else None
    data = _task_data(cfg, spec, hp, val, experts) if spec.uses else None

    def once(params, stats):
        diagnostics: dict = {}
        start = time.time()
        merged = do_merge(run.method, pre, experts, stats=stats, diagnostics=diagnostics, data=data, family=_hf(),
                          **params)
        if data is not None and data.not_applicable:
            diagnostics["not_applicable"] = data.not_applicable
        return merged, diagnostics, time.time() - start

    if not auto:
        merged, diagnostics, wall = once(hp, _run_stats(cfg, run))
    else:
        per_scale = any(v.is_grid for v in run.variants)
        expert_val = {t: read_json(L.expert_log(t))["val_score"] for t in cfg.tasks}
        curve, kept, wall = [], None, 0.0
        if not per_scale:
            one, diagnostics, wall = once({**hp, key: 1.0}, _run_stats(cfg, run))
            delta = {k: one[k].float() - pre[k].float() for k in pre if pre[k].is_floating_point()}
        for s in tqdm(cfg.evaluate.scale_grid, desc=f"text {run.name}: {key} on validation", mininterval=2.0):
            s = float(s)
            if per_scale:
                state, diag, w = (pre, {}, 0.0) if s == 0.0 else once({**hp, key: s}, _run_stats(cfg, run, s))
                wall += w
            else:
                state = {k: (pre[k].float() + s * delta[k]).to(pre[k].dtype) if k in delta else pre[k] for k in pre}
            curve.append({"scale": s, "val_normalized": _normalised({t: val(state, t) for t in cfg.tasks}, expert_val)})
            if per_scale and (kept is None or scale_rank(curve[-1]) > scale_rank(kept[0])):
                kept = (curve[-1], state, diag)
        choice = choose_scale(curve)
        if per_scale:
            _, merged, diagnostics = kept
        else:
            best = choice["value"]
            merged = {k: (pre[k].float() + best * delta[k]).to(pre[k].dtype) if k in delta else pre[k] for k in pre}
        info = {"name": key, "value": choice["value"], "chosen_by": "validation", "on_edge": choice["on_edge"],
                "grid": curve}
    inputs = {str(L.base_weights()): hash_file(L.base_weights())}
    inputs.update({str(L.expert(t)): hash_file(L.expert(t)) for t in cfg.tasks})
    if spec.task_aware:  # a shared part and a per-task part, in one file (as for images)
        tensors, layout = merged.to_tensors()
        save_tensors(L.merged(run.name), tensors, {"run": run.name, "method": run.method, "suite": cfg.suite,
                                                   "task_aware": layout})
    else:
        save_tensors(L.merged(run.name), {k: v.contiguous() for k, v in merged.items()},
                     {"run": run.name, "method": run.method, "suite": cfg.suite})
    write_json(L.merge_report(run.name), {
        "run": run.name, "method": run.method, "pretty": spec.pretty, "paper": spec.paper, "suite": cfg.suite,
        "hyperparameters": run.hparams, "sweep": list(run.sweep) if run.sweep else None, "scale": info,
        "variants": [v.name for v in run.variants], "wall_s": round(wall, 3), "diagnostics": diagnostics,
        "inputs": inputs, "model_sha256": hash_file(L.merged(run.name))})
    return L.merged(run.name)


def evaluate(cfg: Config, model_name: str) -> Path:
    """Each task's GLUE headline on its test split, with the task's own head: ``zeroshot`` is the pre-trained
    body with the experts' heads, ``individual`` the experts, else a merge run's body."""
    _enter(cfg)
    if not scored_here(cfg.tasks):
        raise MergeflowError(f"evaluate: this run's tasks ({', '.join(cfg.tasks)}) are calibration tasks, scored "
                             f"outside mergeflow; {L.reports / 'report.html'} (`mergeflow report`) says how")
    test = _Scorer(cfg, cfg.tasks, "test")
    inputs = {}
    if model_name == "zeroshot":
        bodies = dict.fromkeys(cfg.tasks, _pre(cfg.tasks[0]))
    elif model_name == "individual":
        bodies = {t: _hf().merged_part(load_expert(t)) for t in cfg.tasks}
        inputs.update({str(L.expert(t)): hash_file(L.expert(t)) for t in cfg.tasks})
    else:
        cfg.run(model_name)
        file = L.merged(model_name)
        if not file.is_file():
            raise MergeflowError(f"{file}: not found; run `mergeflow merge --method {model_name}`")
        body = load_tensors(file)
        layout = load_metadata(file).get("task_aware")
        if layout:  # a task-aware result: each task scored with its own part
            from mergeflow.merge.task_aware import from_tensors

            part, pre = from_tensors(body, layout), _pre(cfg.tasks[0])
            bodies = {t: part.state(pre, t) for t in cfg.tasks}
        else:
            bodies = dict.fromkeys(cfg.tasks, body)
        inputs[str(file)] = hash_file(file)
    scores = {t: test(bodies[t], t) for t in cfg.tasks}
    numbers: dict = {"average": sum(scores.values()) / len(scores)}
    if model_name != "individual":
        experts = read_json(L.metrics("individual"))["score"]
        numbers["normalized"] = _normalised(scores, experts)
        report = read_json(L.merge_report(model_name)) if model_name != "zeroshot" else None
        if report is not None and isinstance(report["scale"]["value"], (int, float)):
            numbers["scale"] = report["scale"]["value"]
    numbers["score"] = scores
    numbers["metric"] = {t: task_metric(cfg.raw, t) for t in cfg.tasks}
    record = {"model": model_name, "suite": cfg.suite, "inputs": inputs,
              "count": {t: _size(test.data[t]) for t in cfg.tasks}}
    if model_name == "individual":
        pre = _pre(cfg.tasks[0])
        norm = float(sum(v.float().pow(2).sum() for k, v in pre.items() if v.is_floating_point()) ** 0.5)
        record["task_vector_ratio"] = {t: float(sum((bodies[t][k].float() - pre[k].float()).pow(2).sum()
                                                    for k in pre if pre[k].is_floating_point()) ** 0.5) / norm
                                       for t in cfg.tasks}
    write_json(L.evaluation(model_name), record)
    write_json(L.metrics(model_name), numbers)
    return L.metrics(model_name)
