"""Tokenizers (Hugging Face ``tokenizers``) and token-sequence splits.

The offline base's tokenizer is a word-level one trained on its pre-training corpus, with RoBERTa's
special tokens and pair template (``<s> A </s></s> B </s>``). A published model brings its own
``tokenizer.json``; :func:`encode` works with either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mergeflow.errors import MergeflowError

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's ids 0..4


def train_word_tokenizer(texts: Sequence[str], words: Sequence[str] = ()):
    """A word-level tokenizer of ``texts`` (plus ``words``, so that every word of the lexicon has an id)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIALS), min_frequency=1, show_progress=False)
    tok.train_from_iterator([*texts, " ".join(words)], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[(s, tok.token_to_id(s)) for s in ("<s>", "</s>")])
    return tok


def load_tokenizer(path: str | Path):
    """A ``tokenizer.json``; a missing or unreadable file is one line naming it."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise MergeflowError(f"{path}: tokenizer not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises bare Exceptions
        raise MergeflowError(f"{path}: not a tokenizer.json ({str(exc).splitlines()[0][:120]})") from None


def _special_id(tokenizer, names: tuple[str, ...], what: str) -> int:
    for token in names:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return found
    raise MergeflowError(f"tokenizer: no {what} token ({' or '.join(names)})")


def pad_id(tokenizer, fallback: int | None = None) -> int:
    """The tokenizer's padding token, else ``fallback`` (the model's ``pad_token_id``: GPT-2's tokenizer has no
    padding token and pads with end-of-text)."""
    if fallback is not None and not any(tokenizer.token_to_id(t) is not None for t in ("<pad>", "[PAD]")):
        return int(fallback)
    return _special_id(tokenizer, ("<pad>", "[PAD]"), "padding")


def mask_id(tokenizer) -> int:
    return _special_id(tokenizer, ("<mask>", "[MASK]"), "mask")


def check_matches(tokenizer, vocab_size: int, source: str) -> None:
    """A tokenizer whose ids reach past the model's embedding table does not belong to the model."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise MergeflowError(f"{source}: the tokenizer has {size} tokens but the model's vocabulary has "
                             f"{vocab_size} rows; they do not belong together")


def encode(tokenizer, texts_a: Sequence[str], texts_b: Sequence[str | None] | None, max_length: int,
           pad: int | None = None) -> dict[str, np.ndarray]:
    """``input_ids`` (int32) and ``attention_mask`` (uint8), ``(N, max_length)``: padded on the right (with
    ``pad`` where the tokenizer has no padding token), pairs truncated longest-first (a tokenizer without a pair
    template, GPT-2's, joins the two token lists). ``token_type_ids`` when the template sets them (BERT's)."""
    tok = tokenizer
    padding = pad_id(tok, pad)
    tok.enable_padding(pad_id=padding, pad_token=tok.id_to_token(padding), length=max_length)
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    if texts_b is not None and any(b is not None for b in texts_b):
        if any(b is None for b in texts_b):
            raise MergeflowError("encode: a pair task with a missing second sentence")
        encodings = tok.encode_batch(list(zip(texts_a, texts_b, strict=True)))
    else:
        encodings = tok.encode_batch(list(texts_a))
    out = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int32),
           "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.uint8)}
    types = np.array([e.type_ids for e in encodings], dtype=np.uint8)
    if types.any():
        out["token_type_ids"] = types
    return out
