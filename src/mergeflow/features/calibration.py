"""Statistics of a Hugging Face model folder on a calibration text file, written a few layers at a time: the
input of ``mergeflow merge-files --stats`` for a model too large for the pipeline's features stage.

The folder holds ``config.json``, its weights (``model.safetensors`` or shards) and ``tokenizer.json``; its
family is its ``model_type``'s (:mod:`mergeflow.families.hf_folder`). A causal LM is run with its vocabulary
projection, so a tied model's statistics include the projection's input (LOT's tied rule). The texts are a UTF-8
file, one example per line; the first ``examples`` non-empty lines are used, each cut to ``max_length`` tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mergeflow.errors import MergeflowError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def read_texts(path: str | Path, count: int) -> list[str]:
    """The first ``count`` non-empty lines of ``path``; fewer is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MergeflowError(f"{path}: calibration texts not found")
    texts = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for line in f:
            if line.strip():
                texts.append(line.rstrip("\n"))
                if len(texts) == count:
                    return texts
    raise MergeflowError(f"{path}: {len(texts)} non-empty lines, {count} examples asked")


def folder_statistics(folder: str | Path, texts: str | Path, out: str | Path, *, examples: int = 64,
                      max_length: int = 512, batch_size: int = 8, layers_per_pass: int = 4,
                      dtype: str = "float32", weighting: str = "tokens", device: str = "cpu") -> Path:
    """Write the statistics of the model in ``folder`` on ``texts`` to ``out`` (see the module's docstring)."""
    from mergeflow.families.hf_folder import family_of, load, read_config, weight_files, with_padding
    from mergeflow.features.tokens import write_token_stats
    from mergeflow.io import hash_file
    from mergeflow.text.tokenize import check_matches, encode, load_tokenizer

    if dtype not in DTYPES:
        raise MergeflowError(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")
    folder = Path(folder)
    config = with_padding(read_config(folder))
    family = family_of(config, str(folder / "config.json"))
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    check_matches(tokenizer, int(config.get("vocab_size", 0)), str(folder / "tokenizer.json"))
    arrays = encode(tokenizer, read_texts(texts, examples), None, max_length, config.get("pad_token_id"))
    ids = torch.from_numpy(arrays["input_ids"].astype("int64"))
    mask = torch.from_numpy(arrays["attention_mask"].astype("int64"))
    batches = [{"input_ids": ids[i:i + batch_size], "attention_mask": mask[i:i + batch_size]}
               for i in range(0, len(ids), batch_size)]
    model = load(folder).to(device)
    weights = {file.name: hash_file(file) for file in weight_files(folder)}
    metadata = {"model": str(folder), "weights_sha256": json.dumps(weights, sort_keys=True), "texts": str(texts),
                "texts_sha256": hash_file(texts), "examples": str(examples), "max_length": str(max_length)}
    return write_token_stats(model, batches, family, out, layers_per_pass=layers_per_pass, metadata=metadata,
                             dtype=DTYPES[dtype], weighting=weighting, device=device)
