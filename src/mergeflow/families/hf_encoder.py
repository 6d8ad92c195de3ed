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


def load(folder: str | Path, num_labels: int | None = None):
    """The model saved in ``folder`` (``config.json`` and ``model.safetensors``; no network).

    Index buffers a checkpoint may hold are dropped (the model makes its own). With ``num_labels``, a bare
    encoder's weights become the body of a sequence classifier whose head is newly initialised.
    """
    from mergeflow.io import load_tensors, read_json

    folder = Path(folder)
    config = read_json(folder / "config.json")
    check_config(config, _shapes(folder / "model.safetensors"), str(folder / "config.json"))
    model = build(config, num_labels)
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


MAX_CONFIG_BYTES = 1 << 20  # a Hugging Face config.json is a few kB


def read_folder(folder: str | Path, num_labels: int | None = None) -> tuple[dict, dict]:
    """The config and weights of a Hugging Face BERT/RoBERTa folder (``config.json`` and ``model.safetensors``,
    or ``pytorch_model.bin`` through the restricted unpickler), under the names :func:`build` gives.

    With ``num_labels`` None: the body, whatever the folder holds (a bare encoder, a masked LM or a classifier:
    the task model's prefix stripped, its head dropped). Else a sequence classifier's weights with a head of
    ``num_labels`` outputs (a published GLUE checkpoint). A tensor the model needs and the folder lacks, or a
    head of another size, is one line naming it.
    """
    from mergeflow.io import read_json
    from mergeflow.models.community import _hf_state

    folder = Path(folder)
    file = folder / "config.json"
    if not file.is_file():
        raise MergeflowError(f"{folder}: no config.json (a Hugging Face model folder)")
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise MergeflowError(f"{file}: over {MAX_CONFIG_BYTES} bytes; not a model configuration")
    config = read_json(file)
    if not isinstance(config, dict):
        raise MergeflowError(f"{file}: not a JSON object")
    config = {k: v for k, v in config.items() if k not in ("architectures", "id2label", "label2id", "num_labels")}
    state = {k: v for k, v in _hf_state(folder).items() if HF_ENCODER.unit(k).kind != "excluded"}
    check_config(config, {k: tuple(v.shape) for k, v in state.items()}, str(file))
    wanted = build(config, num_labels).state_dict()
    prefix = f"{config['model_type']}."
    if num_labels is None:
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()
                 if HF_ENCODER.unit(k).kind != "head"}
    else:
        state = {k if k.startswith(prefix) or HF_ENCODER.unit(k).kind == "head" else prefix + k: v
                 for k, v in state.items()}
    where = folder / ("model.safetensors" if (folder / "model.safetensors").is_file() else "pytorch_model.bin")
    out = {}
    for key, ref in wanted.items():
        if HF_ENCODER.unit(key).kind == "excluded":
            continue
        if key not in state:
            raise MergeflowError(f"{where}: {key} is missing")
        if tuple(state[key].shape) != tuple(ref.shape):
            raise MergeflowError(f"{where}: {key} has shape {tuple(state[key].shape)}, the model "
                                 f"{tuple(ref.shape)}" + (f" ({num_labels} outputs)" if key.startswith("classifier")
                                                          else ""))
        out[key] = state[key].to(ref.dtype).contiguous()
    return config, out


def _shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    if not file.is_file():
        raise MergeflowError(f"{file}: file not found")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors' own errors come as several types
        raise MergeflowError(f"{file}: unreadable safetensors header ({str(exc).splitlines()[0][:160]})") from None


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

HF_ENCODER = register_family(Family(
    "hf-encoder", "Hugging Face transformers BERT and RoBERTa encoders and their sequence classifiers", RULES,
    statistics=_statistics, build=build, load=load))
