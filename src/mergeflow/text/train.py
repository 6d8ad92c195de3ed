"""Training of text models: masked-LM pre-training of a base, fine-tuning of sequence-classification
experts, and prediction. Plain loops over token tensors (AdamW, linear warm-up then cosine decay)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mergeflow.train.schedule import cosine_with_warmup


def optimizer_step(model, optimizer, schedule, loss: torch.Tensor, grad_clip: float) -> None:
    """One training step of the text models: gradients, the norm clipped to ``grad_clip``, AdamW, the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    schedule.step()


class LossLog:
    """The loss curve a training run records: the mean loss of every ``every`` steps, and of the steps since the
    last entry when the run ends at step ``last``."""

    def __init__(self, every: int, last: int):
        self.every, self.last, self.entries, self._running = every, last, [], 0.0

    def add(self, step: int, loss: torch.Tensor) -> None:
        self._running += float(loss.detach())
        if (step + 1) % self.every == 0 or step + 1 == self.last:
            self.entries.append({"step": step + 1, "loss": self._running / ((step % self.every) + 1)})
            self._running = 0.0


def token_batch(arrays: dict[str, np.ndarray], index: np.ndarray, device) -> dict[str, torch.Tensor]:
    """The rows ``index`` as int64 tensors, cut after the longest real sequence among them: trailing
    padding changes no real token's output and costs as much as a token."""
    width = max(1, int(arrays["attention_mask"][index].sum(1).max()))
    out = {}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key in arrays:
            out[key] = torch.from_numpy(arrays[key][index, :width].astype(np.int64)).to(device)
    return out


def mask_tokens(ids: torch.Tensor, attention: torch.Tensor, special: torch.Tensor, mask_token: int, vocab: int,
                generator: torch.Generator, prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``prob`` of the real, non-special tokens are targets; of those 80 % become the mask
    token, 10 % a random token, 10 % stay. Returns the inputs and the labels (-100 where not a target)."""
    candidates = attention.bool() & ~torch.isin(ids, special)
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & candidates
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_token), ids)
    random_ids = torch.randint(len(special), vocab, ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, labels


def pretrain_mlm(model, arrays: dict[str, np.ndarray], *, steps: int, batch_size: int, lr: float,
                 weight_decay: float, warmup_steps: int, seed: int, special_ids: list[int], mask_token: int,
                 device="cpu", log_every: int = 100, stop_after: int | None = None) -> list[dict]:
    """Masked-LM training of ``model`` (a ``*ForMaskedLM``) on ``arrays`` (:func:`mergeflow.text.tokenize.encode`
    of the corpus). Returns the loss log. ``stop_after`` ends the run early on the full run's schedule (its
    first steps are the full run's: a check that a recorded run starts as recorded)."""
    model = model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = cosine_with_warmup(opt, warmup_steps, steps)
    special = torch.tensor(special_ids)
    vocab = model.config.vocab_size
    n = len(arrays["input_ids"])
    last = steps if stop_after is None else min(steps, stop_after)
    log = LossLog(log_every, last)
    for step in tqdm(range(last), desc="pretrain", unit="step", mininterval=5.0):
        batch = token_batch(arrays, np.sort(rng.choice(n, size=batch_size, replace=False)), "cpu")
        inputs, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], special, mask_token, vocab, gen)
        batch["input_ids"] = inputs
        out = model(**{k: v.to(device) for k, v in batch.items()}, labels=labels.to(device))
        optimizer_step(model, opt, sched, out.loss, 1.0)
        log.add(step, out.loss)
    return log.entries


def finetune(model, arrays: dict[str, np.ndarray], labels: np.ndarray, *, steps: int, batch_size: int, lr: float,
             weight_decay: float, warmup_steps: int, seed: int, grad_clip: float = 1.0, device="cpu",
             log_every: int = 50) -> list[dict]:
    """Fine-tune a ``*ForSequenceClassification`` on labels (class ids, or scores when it has one output:
    mean squared error). Every parameter trains, the head too, as in the GLUE recipe."""
    model = model.to(device).train()
    torch.manual_seed(seed)  # dropout
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = cosine_with_warmup(opt, warmup_steps, steps)
    regression = model.config.num_labels == 1
    n = len(labels)
    log = LossLog(log_every, steps)
    order = rng.permutation(n)
    cursor = 0
    for step in tqdm(range(steps), desc="finetune", unit="step", mininterval=5.0, leave=False):
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        index = np.sort(order[cursor:cursor + batch_size])
        cursor += batch_size
        logits = model(**token_batch(arrays, index, device)).logits
        target = torch.from_numpy(labels[index]).to(device)
        loss = F.mse_loss(logits.squeeze(-1), target.float()) if regression else F.cross_entropy(logits, target.long())
        optimizer_step(model, opt, sched, loss, grad_clip)
        log.add(step, loss)
    return log.entries


@torch.inference_mode()
def predict(model, arrays: dict[str, np.ndarray], *, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Class ids (argmax), or scores for a one-output model."""
    model = model.to(device).eval()
    out = []
    for start in range(0, len(arrays["input_ids"]), batch_size):
        index = np.arange(start, min(start + batch_size, len(arrays["input_ids"])))
        logits = model(**token_batch(arrays, index, device)).logits
        out.append(logits.squeeze(-1).float().cpu() if logits.shape[-1] == 1 else logits.argmax(-1).cpu())
    return torch.cat(out).numpy()
