"""Contrastive pre-training (open_clip's CLIP loss) of a small CLIP on image–caption pairs."""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from mergeflow.errors import MergeflowError
from mergeflow.models.classifier import normalize_images
from mergeflow.models.factory import _open_clip
from mergeflow.train.schedule import cosine_with_warmup


def pretrain_clip(model, arch: str, images: torch.Tensor, captions: list[str], *, steps: int, batch_size: int,
                  lr: float, weight_decay: float, warmup_steps: int, seed: int, device: torch.device,
                  stop_after: int | None = None) -> dict:
    """Train both towers on (image, caption) pairs with AdamW and a cosine schedule.

    Args:
        images: (N, 3, S, S) uint8 at the model's input size.
        captions: N captions, ``captions[i]`` describing ``images[i]``.
        stop_after: stop after this many of the schedule's ``steps`` (the start of the full run, for checks).
    Returns:
        A log with the loss curve and wall time.
    """
    if len(images) != len(captions) or not len(captions):
        raise MergeflowError(f"pretrain: {len(images)} images but {len(captions)} captions")
    oc = _open_clip()
    tokens = oc.get_tokenizer(arch)(captions)
    torch.manual_seed(seed)
    model = model.to(device).train()
    loss_fn = oc.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = cosine_with_warmup(opt, warmup_steps, steps)
    gen = torch.Generator().manual_seed(seed)
    curve, start = [], time.time()
    taken = steps if stop_after is None else min(steps, stop_after)
    for step in tqdm(range(taken), desc="pretrain", mininterval=2.0):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        img_f, txt_f, scale = model(normalize_images(images[idx].to(device)), tokens[idx].to(device))
        loss = loss_fn(img_f, txt_f, scale)
        if not torch.isfinite(loss):
            raise MergeflowError(f"pretrain: loss became {loss.item()} at step {step}; lower pretrain.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        curve.append(round(loss.item(), 5))
    return {"loss": curve, "wall_s": round(time.time() - start, 2), "steps": taken}
