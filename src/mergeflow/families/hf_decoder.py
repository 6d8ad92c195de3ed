"""Hugging Face ``transformers`` decoder language models: LLaMA-style (LLaMA, Mistral, Qwen2, Qwen3) and GPT-2.

LLaMA-style blocks: RMSNorm before attention and MLP (``input_layernorm``, ``post_attention_layernorm``,
the final ``norm``; Qwen3 adds per-head ``q_norm``/``k_norm``), grouped-query attention (k and v have fewer
rows than q, and still read q's input: one site), a gated MLP whose ``gate_proj`` and ``up_proj`` read one
input (one site, named by ``gate_proj``), rotary positions (``inv_freq`` buffers, excluded), biases on q/k/v
in Qwen2. GPT-2 stores its linear weights input-major (``Conv1D``: ``y = x @ W``), with q, k and v packed
in ``c_attn`` (three row blocks of the matrix view), learned positions (``wpe``) and LayerNorm.

``lm_head`` — the vocabulary projection of a causal LM — is a linear unit reading the final norm's output:
it is part of the language model every expert shares, not a per-task head. A tied model (``lm_head`` is the
token embedding, saved once) has no ``lm_head.weight`` in its state dict; the embedding's ``output_site``
names the projection's statistics so that a method can treat the table in both roles (LOT's tied rule,
algorithms.md §9); its hook still records the projection's input Gram under ``lm_head.weight``. ``score``
(a sequence classifier's head, e.g. FusionBench's GPT-2 GLUE experts) is a per-task head, never merged.
"""

from __future__ import annotations

import re
from pathlib import Path

from mergeflow import _torchvision_compat  # noqa: F401  (must precede transformers, which imports torchvision)
from mergeflow.errors import MergeflowError
from mergeflow.families import Family, Rule, register_family

LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MODEL_TYPES = (*LLAMA_TYPES, "gpt2")


def _statistics(model, batches, **options):
    from mergeflow.features.tokens import collect_token_stats

    return collect_token_stats(model, batches, HF_DECODER, **options)


def build(config: dict, num_labels: int | None = None):
    """A randomly initialised causal LM (``num_labels`` None) or sequence classifier from a config dict."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise MergeflowError(f"hf-decoder: model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    import transformers as tf

    cfg = tf.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "model_type"}, model_type=model_type)
    if num_labels is None:
        return tf.AutoModelForCausalLM.from_config(cfg).eval()
    cfg.num_labels = num_labels
    return tf.AutoModelForSequenceClassification.from_config(cfg).eval()


def load(folder: str | Path, num_labels: int | None = None):
    """The causal LM (or, with ``num_labels``, sequence classifier) saved in ``folder``
    (:func:`mergeflow.families.hf_folder.load`)."""
    from mergeflow.families.hf_folder import load as load_folder

    return load_folder(folder, num_labels)


# the config keys that size a model, and the tensor (by name suffix) and dimension that show each, per layout
_GPT2_SIZES = {"vocab_size": ("wte.weight", 0), "n_embd": ("wte.weight", 1), "n_positions": ("wpe.weight", 0)}
_LLAMA_SIZES = {"vocab_size": ("embed_tokens.weight", 0), "hidden_size": ("embed_tokens.weight", 1),
                "intermediate_size": ("layers.0.mlp.gate_proj.weight", 0)}


def check_config(config: dict, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """The sizes ``config`` would allocate must be the weights': vocabulary, width, depth, MLP or positions."""
    if not isinstance(config, dict):
        raise MergeflowError(f"{source}: not a JSON object")
    gpt2 = config.get("model_type") == "gpt2"
    sizes, depth_key, block = ((_GPT2_SIZES, "n_layer", r"(?:^|\.)h\.(\d+)\.") if gpt2 else
                               (_LLAMA_SIZES, "num_hidden_layers", r"(?:^|\.)layers\.(\d+)\."))
    for key, (suffix, dim) in sizes.items():
        shape = next((s for k, s in shapes.items() if k == suffix or k.endswith("." + suffix)), None)
        if shape is not None and config.get(key) != shape[dim]:
            raise MergeflowError(f"{source}: {key} is {config.get(key)!r} but the weights have {shape[dim]}")
    layers = {int(m.group(1)) for k in shapes for m in [re.search(block, k)] if m}
    if layers and config.get(depth_key) != max(layers) + 1:
        raise MergeflowError(f"{source}: {depth_key} is {config.get(depth_key)!r} but the weights have "
                             f"{max(layers) + 1} layers")


RULES = (
    Rule(r"^score\.", "head"),
    # the causal-mask buffers of old GPT-2 checkpoints; `(^|\.)` keeps c_attn.bias (a real bias) out
    Rule(r"(rotary_emb\.(inv_freq|original_inv_freq)|(^|\.)attn\.(bias|masked_bias))$", "excluded"),
    # LLaMA-style
    Rule(r"(^|\.)embed_tokens\.weight$", "embedding", site_is_key=True, output_site="lm_head.weight"),
    Rule(r"self_attn\.(q|k|v)_proj\.weight$", "linear", site="self_attn.q_proj.weight"),
    Rule(r"(^|\.)(self_attn\.o_proj|mlp\.down_proj)\.weight$", "linear", site_is_key=True),
    Rule(r"mlp\.(gate|up)_proj\.weight$", "linear", site="mlp.gate_proj.weight"),
    Rule(r"(^|\.)(input_layernorm|post_attention_layernorm|norm|q_norm|k_norm)\.weight$", "scale",
         site_is_key=True),
    # GPT-2
    Rule(r"(^|\.)wte\.weight$", "embedding", site_is_key=True, output_site="lm_head.weight"),
    Rule(r"(^|\.)wpe\.weight$", "embedding", site_is_key=True),
    Rule(r"(^|\.)attn\.c_attn\.weight$", "linear", site_is_key=True, input_major=True, blocks=3),
    Rule(r"(^|\.)(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$", "linear", site_is_key=True, input_major=True),
    Rule(r"(^|\.)(ln_1|ln_2|ln_f)\.weight$", "scale", site_is_key=True),
    # both
    Rule(r"^lm_head\.weight$", "linear", site_is_key=True, vocabulary=True),
    Rule(r"\.bias$", "shift"),
)

HF_DECODER = register_family(Family(
    "hf-decoder", "Hugging Face transformers decoder LMs: LLaMA, Mistral, Qwen2, Qwen3 (RMSNorm, GQA, gated MLP) "
    "and GPT-2 (Conv1D, input-major)", RULES, statistics=_statistics, build=build, load=load, model_types=MODEL_TYPES,
    check_config=check_config))
