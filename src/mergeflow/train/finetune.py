"""Fine-tune the image encoder of the classifier on one task, head frozen."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mergeflow.errors import MergeflowError
from mergeflow.models.classifier import ImageClassifier, normalize_images
from mergeflow.train.schedule import cosine_with_warmup


def finetune(classifier: ImageClassifier, images: torch.Tensor, labels: torch.Tensor, *, steps: int, batch_size: int,
             lr: float, weight_decay: float, warmup_steps: int, grad_clip: float, seed: int, device: torch.device,
             task: str = "task", log_every: int = 10) -> dict:
    """AdamW + cosine schedule with warm-up + gradient clipping, label smoothing 0, seeded.

    Only ``classifier.visual`` is trained (the head is a buffer). A non-finite loss stops with a
    :class:`MergeflowError`. Returns a log: loss every ``log_every`` steps and wall time.
    """
    torch.manual_seed(seed)
    classifier = classifier.to(device).train()
    params = [p for p in classifier.visual.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = cosine_with_warmup(opt, warmup_steps, steps)
    gen = torch.Generator().manual_seed(seed)
    curve, start = [], time.time()
    for step in tqdm(range(steps), desc=f"finetune {task}", mininterval=2.0):
        idx = torch.randint(len(labels), (batch_size,), generator=gen)
        logits = classifier(normalize_images(images[idx].to(device)))
        loss = F.cross_entropy(logits, labels[idx].to(device), label_smoothing=0.0)
        if not torch.isfinite(loss):
            raise MergeflowError(f"finetune {task}: loss became {loss.item()} at step {step}; lower finetune.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            curve.append({"step": step, "loss": round(loss.item(), 5), "lr": sched.get_last_lr()[0]})
    return {"loss_curve": curve, "wall_s": round(time.time() - start, 2)}
