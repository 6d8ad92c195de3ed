"""Hugging Face ``transformers`` BERT and RoBERTa encoders (the text suites; algorithms.md §8).

Names may carry the task model's prefix (``roberta.``, ``bert.``) or none (a bare encoder). q, k and v
are three weights reading one input: one site, named by the query weight. Word, position and token-type
tables are embeddings (statistics: how often each row was looked up on real tokens). What sits on top of
the encoder for one task — ``classifier.*`` of a sequence classifier, ``lm_head.*``/``cls.*`` of a masked
LM — is a per-task head, never merged. ``pooler.dense`` is part of the pre-trained body: a linear unit
reading the first token. ``position_ids``/``token_type_ids`` are index buffers some checkpoints hold.
"""

from __future__ import annotations

import re
from pathlib import Path

from mergeflow import _torchvision_compat  # noqa: F401  (must precede transformers, which imports torchvision)
from mergeflow.errors import MergeflowError
from mergeflow.families import Family, Rule, register_family

MODEL_TYPES = ("bert", "roberta")


def _statistics(model, batches, **options):
    from mergeflow.features.tokens import collect_token_stats

    return collect_token_stats(model, batches, HF_ENCODER, **options)


def _transformers():
    import transformers

    return transformers


def build(config: dict, num_labels: int | None = None):
    """A randomly initialised encoder (``num_labels`` None) or sequence classifier from a config dict."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise MergeflowError(f"hf-encoder: model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    tf = _transformers()
    cfg = tf.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "model_type"}, model_type=model_type)
    if num_labels is None:
        return tf.AutoModel.from_config(cfg, add_pooling_layer=model_type == "bert").eval()
    cfg.num_labels = num_labels
    return tf.AutoModelForSequenceClassification.from_config(cfg).eval()


def check_config(config: dict, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """The sizes ``config`` would allocate must be the ones the weights have: a config whose vocabulary,
    width, depth or feed-forward size disagrees with the file is refused before anything is built."""
    if not isinstance(config, dict):
        raise MergeflowError(f"{source}: not a JSON object")
    def find(suffix: str) -> tuple[int, ...] | None:
        return next((shape for key, shape in shapes.items() if key.endswith(suffix)), None)
    word = find("embeddings.word_embeddings.weight")
    ffn = find("layer.0.intermediate.dense.weight")
    layers = {int(m.group(1)) for key in shapes for m in [re.search(r"encoder\.layer\.(\d+)\.", key)] if m}
    expected = {"vocab_size": word[0] if word else None, "hidden_size": word[1] if word else None,
                "intermediate_size": ffn[0] if ffn else None,
                "num_hidden_layers": max(layers) + 1 if layers else None}
    for key, value in expected.items():
        given = config.get(key)
        if value is not None and given != value:
            raise MergeflowError(f"{source}: {key} is {given!r} but the weights have {value}")
    position = find("embeddings.position_embeddings.weight")
    if position is not None and config.get("max_position_embeddings") != position[0]:
        raise MergeflowError(f"{source}: max_position_embeddings is {config.get('max_position_embeddings')!r} but "
                             f"the weights have {position[0]}")


RULES = (
    Rule(r"^(classifier|lm_head|cls|qa_outputs|score)\.", "head"),
    Rule(r"(^|\.)embeddings\.(position_ids|token_type_ids)$", "excluded"),
    Rule(r"(^|\.)embeddings\.(word|position|token_type)_embeddings\.weight$", "embedding", site_is_key=True),
    Rule(r"attention\.self\.(query|key|value)\.weight$", "linear", site="attention.self.query.weight"),
    Rule(r"(^|\.)(attention\.output\.dense|intermediate\.dense|output\.dense|pooler\.dense)\.weight$", "linear",
         site_is_key=True),
    Rule(r"(^|\.)LayerNorm\.weight$", "scale", site_is_key=True),
    Rule(r"\.bias$", "shift"),
)


def load(folder: str | Path, num_labels: int | None = None):
    """The encoder (or, with ``num_labels``, sequence classifier) saved in ``folder``
    (:func:`mergeflow.families.hf_folder.load`)."""
    from mergeflow.families.hf_folder import load as load_folder

    return load_folder(folder, num_labels)


HF_ENCODER = register_family(Family(
    "hf-encoder", "Hugging Face transformers BERT and RoBERTa encoders and their sequence classifiers", RULES,
    statistics=_statistics, build=build, load=load, model_types=MODEL_TYPES, check_config=check_config))
