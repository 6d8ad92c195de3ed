"""Causal language models on the generated tasks: next-token pre-training, fine-tuning on the answer's tokens
only, and greedy answers.

A training sequence is ``<s> prompt answer </s>``; fine-tuning's loss is the cross-entropy of the answer's
words and the closing ``</s>`` given everything before them (the prompt is context, never a target, as in
instruction tuning). An answer is what greedy decoding writes after ``<s> prompt`` up to ``</s>``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from mergeflow.errors import MergeflowError
from mergeflow.text.tokenize import pad_id
from mergeflow.text.train import LossLog, optimizer_step
from mergeflow.train.schedule import cosine_with_warmup


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def _special(tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise MergeflowError(f"tokenizer: no {token} token (a causal model's sequences are <s> ... </s>)")
    return found


def encode_answers(tokenizer, prompts: Sequence[str], answers: Sequence[str | None], max_length: int
                   ) -> dict[str, np.ndarray]:
    """``input_ids`` (int32), ``attention_mask`` and ``answer_mask`` (uint8), ``(N, max_length)``, padded on the
    right: ``<s> prompt answer </s>``, or ``<s> text </s>`` with no target where the answer is None (the
    pre-training corpus: every real token after ``<s>`` is then a target, see :func:`targets`). A sequence
    longer than ``max_length`` is an error naming its length: cutting it would cut the answer."""
    bos, eos, pad = _special(tokenizer, "<s>"), _special(tokenizer, "</s>"), pad_id(tokenizer)
    n = len(prompts)
    out = {"input_ids": np.full((n, max_length), pad, dtype=np.int32),
           "attention_mask": np.zeros((n, max_length), dtype=np.uint8),
           "answer_mask": np.zeros((n, max_length), dtype=np.uint8)}
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        head = [bos, *_ids(tokenizer, prompt)]
        tail = [*_ids(tokenizer, answer), eos] if answer is not None else [eos]
        if len(head) + len(tail) > max_length:
            raise MergeflowError(f"encode: a sequence of {len(head) + len(tail)} tokens is longer than "
                                 f"data.max_length = {max_length}: {prompt[:60]!r}")
        out["input_ids"][i, :len(head) + len(tail)] = head + tail
        out["attention_mask"][i, :len(head) + len(tail)] = 1
        if answer is not None:
            out["answer_mask"][i, len(head):len(head) + len(tail)] = 1
    return out


def targets(arrays: dict[str, np.ndarray], index: np.ndarray, answers_only: bool) -> dict[str, torch.Tensor]:
    """The rows ``index`` cut after their longest sequence, with ``labels``: the answer's tokens
    (``answers_only``) or every real token, -100 elsewhere (the model shifts them by one)."""
    width = max(1, int(arrays["attention_mask"][index].sum(1).max()))
    ids = torch.from_numpy(arrays["input_ids"][index, :width].astype(np.int64))
    attention = torch.from_numpy(arrays["attention_mask"][index, :width].astype(np.int64))
    chosen = arrays["answer_mask" if answers_only else "attention_mask"][index, :width].astype(bool)
    labels = torch.where(torch.from_numpy(chosen), ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def train(model, arrays: dict[str, np.ndarray], *, answers_only: bool, steps: int, batch_size: int, lr: float,
          weight_decay: float, warmup_steps: int, seed: int, grad_clip: float = 1.0, device="cpu",
          log_every: int = 50, stop_after: int | None = None) -> list[dict]:
    """AdamW with warm-up then cosine decay on a causal LM: next-token pre-training (``answers_only`` False:
    every token is a target) or fine-tuning on the answers. Batches are drawn in a seeded order, an epoch
    at a time. ``stop_after`` ends the run early on the full run's schedule. Returns the loss log."""
    model = model.to(device).train()
    torch.manual_seed(seed)  # dropout, where a configuration has some
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = cosine_with_warmup(opt, warmup_steps, steps)
    n = len(arrays["input_ids"])
    if batch_size > n:
        raise MergeflowError(f"train: a batch of {batch_size} sequences from {n}")
    order, cursor = rng.permutation(n), 0
    last = steps if stop_after is None else min(steps, stop_after)
    log = LossLog(log_every, last)
    for step in tqdm(range(last), desc="causal LM", unit="step", mininterval=5.0, leave=False):
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        batch = targets(arrays, np.sort(order[cursor:cursor + batch_size]), answers_only)
        cursor += batch_size
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        optimizer_step(model, opt, sched, loss, grad_clip)
        log.add(step, loss)
    return log.entries


def _cache_keyword(model) -> str:
    """The forward argument that carries the key/value cache: ``cache`` since transformers 5.x
    (``past_key_values``, its older name, is deprecated there), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prompts_and_answers(arrays: dict[str, np.ndarray]) -> tuple[list[list[int]], list[list[int]]]:
    """Each sequence of :func:`encode_answers` split back into its prompt's ids (with ``<s>``) and its answer's
    (without ``</s>``)."""
    prompts, answers = [], []
    for ids, attention, answer in zip(arrays["input_ids"], arrays["attention_mask"], arrays["answer_mask"],
                                      strict=True):
        length, where = int(attention.sum()), np.flatnonzero(answer)
        if not len(where):
            raise MergeflowError("prompts_and_answers: a sequence without an answer (a corpus sequence?)")
        prompts.append(ids[:where[0]].tolist())
        answers.append(ids[where[0]:length - 1].tolist())
    return prompts, answers


@torch.inference_mode()
def greedy_ids(model, prompts: Sequence[Sequence[int]], *, eos: int, pad: int, max_new_tokens: int,
               batch_size: int = 256, device="cpu") -> list[list[int]]:
    """The ids greedy decoding writes after each prompt (its ids, ``<s>`` first), up to ``eos`` (not included)
    or ``max_new_tokens``.

    Prompts are padded on the left so that every row's next token is at the last position; positions count
    from each row's first real token, so a prompt's answer does not depend on its batch."""
    model = model.to(device).eval()
    keyword = _cache_keyword(model)
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = [list(map(int, p)) for p in prompts[start:start + batch_size]]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        attention = (torch.arange(width, device=device)[None, :] >= torch.tensor(
            [width - len(r) for r in rows], device=device)[:, None]).long()
        written = torch.empty((len(rows), 0), dtype=torch.long, device=device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        past = None
        step_ids = ids
        for _ in range(max_new_tokens):
            positions = (attention.cumsum(1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
            result = model(input_ids=step_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                           **{keyword: past})
            past = result[keyword]
            token = result.logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, eos), token)
            written = torch.cat([written, token[:, None]], 1)
            done |= token == eos
            if bool(done.all()):
                break
            step_ids = token[:, None]
            attention = torch.cat([attention, torch.ones_like(step_ids)], 1)
        out += [row[:row.index(eos)] if eos in row else row for row in written.tolist()]
    return out


def greedy_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 256,
                   device="cpu") -> list[str]:
    """What greedy decoding writes after ``<s> prompt``, up to ``</s>`` or ``max_new_tokens``, as text."""
    rows = [[_special(tokenizer, "<s>"), *_ids(tokenizer, p)] for p in prompts]
    written = greedy_ids(model, rows, eos=_special(tokenizer, "</s>"), pad=pad_id(tokenizer),
                         max_new_tokens=max_new_tokens, batch_size=batch_size, device=device)
    return [tokenizer.decode(ids) for ids in written]


def exact_matches(model, tokenizer, arrays: dict[str, np.ndarray], *, batch_size: int = 256, device="cpu"
                  ) -> tuple[list[str], list[str]]:
    """Greedy answers to the prompts of prepared sequences, and the answers they hold, as texts (up to one more
    token than the longest answer is written: a longer answer is wrong whatever follows)."""
    prompts, answers = prompts_and_answers(arrays)
    written = greedy_ids(model, prompts, eos=_special(tokenizer, "</s>"), pad=pad_id(tokenizer),
                         max_new_tokens=max(map(len, answers)) + 1, batch_size=batch_size, device=device)
    return [tokenizer.decode(ids) for ids in written], [tokenizer.decode(ids) for ids in answers]
