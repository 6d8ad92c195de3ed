"""Contrastive pre-training (open_clip's CLIP loss) of a small CLIP on captioned offline images."""

from __future__ import annotations

import random
import time

import torch
from tqdm import tqdm

from mergeflow.errors import MergeflowError
from mergeflow.models.classifier import normalize_images
from mergeflow.models.factory import _open_clip
from mergeflow.train.schedule import cosine_with_warmup


def pretrain_clip(model, arch: str, datasets: dict[str, tuple[torch.Tensor, torch.Tensor, list[str], list[str]]], *,
                  steps: int, batch_size: int, lr: float, weight_decay: float, warmup_steps: int, seed: int,
                  device: torch.device) -> dict:
    """Train both towers on (image, caption) pairs; captions are a random template filled with the class name.

    Args:
        datasets: task → (uint8 images, labels, class names, templates).
    Returns:
        A log with the loss curve and wall time.
    """
    oc = _open_clip()
    tokenizer = oc.get_tokenizer(arch)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    images = torch.cat([d[0] for d in datasets.values()])
    captions, caption_of = [], []
    for _imgs, labels, names, templates in datasets.values():
        offset = len(captions)
        captions += [t.format(n) for n in names for t in templates]
        caption_of += [(offset, len(templates), int(lab)) for lab in labels]
    tokens = tokenizer(captions)
    model = model.to(device).train()
    loss_fn = oc.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = cosine_with_warmup(opt, warmup_steps, steps)
    gen = torch.Generator().manual_seed(seed)
    curve, start = [], time.time()
    for step in tqdm(range(steps), desc="pretrain", mininterval=2.0):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        cap = [caption_of[i][0] + caption_of[i][2] * caption_of[i][1] + rng.randrange(caption_of[i][1])
               for i in idx.tolist()]
        x = normalize_images(images[idx].to(device))
        img_f, txt_f, scale = model(x, tokens[cap].to(device))
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
    return {"loss": curve, "wall_s": round(time.time() - start, 2), "steps": steps}
