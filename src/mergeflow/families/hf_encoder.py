"""Hugging Face ``transformers`` BERT and RoBERTa encoders (the text suites; algorithms.md §8).

Names may carry the task model's prefix (``roberta.``, ``bert.``) or none (a bare encoder). q, k and v
are three weights reading one input: one site, named by the query weight. Word, position and token-type
tables are embeddings (statistics: how often each row was looked up on real tokens). What sits on top of
the encoder for one task — ``classifier.*`` of a sequence classifier, ``lm_head.*``/``cls.*`` of a masked
LM — is a per-task head, never merged. ``pooler.dense`` is part of the pre-trained body: a linear unit
reading the first token. ``position_ids``/``token_type_ids`` are index buffers some checkpoints hold.
"""

from __future__ import annotations

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


def load(folder: str | Path, num_labels: int | None = None):
    """The model saved in ``folder`` (``config.json`` and ``model.safetensors``; no network).

    Index buffers a checkpoint may hold are dropped (the model makes its own). With ``num_labels``, a bare
    encoder's weights become the body of a sequence classifier whose head is newly initialised.
    """
    from mergeflow.io import load_tensors, read_json

    folder = Path(folder)
    model = build(read_json(folder / "config.json"), num_labels)
    state = {k: v for k, v in load_tensors(folder / "model.safetensors").items()
             if HF_ENCODER.unit(k).kind != "excluded"}
    prefix = model.base_model_prefix
    if num_labels is not None and not any(k.startswith(f"{prefix}.") for k in state):
        state = {f"{prefix}.{k}": v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if HF_ENCODER.unit(k).kind not in ("head", "excluded") or num_labels is None]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise MergeflowError(f"{folder / 'model.safetensors'}: {key} is {'missing' if missing else 'unexpected'}")
    return model.eval()


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

HF_ENCODER = register_family(Family(
    "hf-encoder", "Hugging Face transformers BERT and RoBERTa encoders and their sequence classifiers", RULES,
    statistics=_statistics, build=build, load=load))
