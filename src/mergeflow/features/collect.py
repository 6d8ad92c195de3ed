"""Layer statistics of an open_clip ``VisionTransformer`` by forward hooks, without storing activations.

``nn.MultiheadAttention`` multiplies ``in_proj_weight`` (not a module) and ``out_proj.weight`` inside
``F.multi_head_attention_forward`` without calling ``out_proj`` as a module, so hooks on ``nn.Linear``
alone miss both. Their true inputs are captured instead: ``in_proj`` sees the ``ln_1`` output (the
attention module's query input), and the attention context — the input of ``out_proj`` — is recomputed
inside a hook on the attention module from that same input.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mergeflow.features.stats import TaskStats
from mergeflow.models.classifier import normalize_images


class _Accumulator:
    def __init__(self, stats: TaskStats, dtype: torch.dtype):
        self.stats, self.dtype = stats, dtype

    def gram(self, key: str, rows: torch.Tensor) -> None:
        x = rows.reshape(-1, rows.shape[-1]).to(self.dtype)
        g = x.t() @ x
        if key in self.stats.gram:
            self.stats.gram[key] += g
        else:
            self.stats.gram[key] = g
        self.stats.rows[key] = self.stats.rows.get(key, 0) + x.shape[0]

    def sqnorm(self, key: str, ln: nn.LayerNorm, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.dtype)
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        xhat = (x - mean) / torch.sqrt(var + ln.eps)
        s = (xhat ** 2).sum(0)
        self.stats.sqnorm[key] = self.stats.sqnorm[key] + s if key in self.stats.sqnorm else s
        self.stats.rows[key] = self.stats.rows.get(key, 0) + x.shape[0]


def attention_context(attn: nn.MultiheadAttention, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """The input of ``attn.out_proj`` for self-attention on ``x`` (the heads' concatenated outputs)."""
    if not attn.batch_first:
        x = x.transpose(0, 1)
    b, n, w = x.shape
    h = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, h, w // h).transpose(1, 2) for t in (q, k, v))
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return ctx.transpose(1, 2).reshape(b, n, w)


def _ln_hook(acc, weight_key, mod, args, out):
    acc.sqnorm(weight_key, mod, args[0])


def _attn_hook(acc, in_key, out_key, mod, args, kwargs, out):
    x = args[0]
    acc.gram(in_key, x)
    acc.gram(out_key, attention_context(mod, x, kwargs.get("attn_mask")))


def _linear_hook(acc, weight_key, mod, args):
    acc.gram(weight_key, args[0])


def _install_hooks(visual: nn.Module, acc: _Accumulator, extra: bool) -> list:
    handles = []
    prefix = {m: n for n, m in visual.named_modules()}

    def key(module: nn.Module, param: str) -> str:
        name = prefix[module]
        return f"{name}.{param}" if name else param

    # each hook gets its parameter names bound now (a closure over the loop variable would see the last one)
    for name, module in visual.named_modules():
        if isinstance(module, nn.LayerNorm):
            handles.append(module.register_forward_hook(partial(_ln_hook, acc, key(module, "weight"))))
        if isinstance(module, nn.MultiheadAttention):
            hook = partial(_attn_hook, acc, key(module, "in_proj_weight"), key(module.out_proj, "weight"))
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        if name.endswith("mlp.c_fc") or name.endswith("mlp.c_proj"):
            handles.append(module.register_forward_pre_hook(partial(_linear_hook, acc, key(module, "weight"))))
    if extra and hasattr(visual, "conv1"):
        conv = visual.conv1

        def conv_hook(mod, args):
            patches = F.unfold(args[0], kernel_size=mod.kernel_size, stride=mod.stride)  # (B, 3·P·P, L)
            acc.gram("conv1.weight", patches.transpose(1, 2))
        handles.append(conv.register_forward_pre_hook(conv_hook))
    if extra and getattr(visual, "proj", None) is not None and hasattr(visual, "ln_post"):
        def post_hook(mod, args, out):
            pooled = out[:, 0] if out.ndim == 3 else out  # class-token pooling when ln_post sees all tokens
            acc.gram("proj", pooled)
        handles.append(visual.ln_post.register_forward_hook(post_hook))
    return handles


def _batches(images) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        yield images
    else:
        yield from images


@torch.inference_mode()
def collect_stats(visual: nn.Module, images, *, dtype: torch.dtype = torch.float32, extra: bool = True,
                  device: torch.device | str | None = None) -> TaskStats:
    """Grams of every linear unit's input and ``sqnorm`` of every LayerNorm's normalised input.

    Args:
        visual: an open_clip ``VisionTransformer``.
        images: a preprocessed float batch ``(N, 3, H, W)`` or an iterable of such batches (uint8 batches
            are CLIP-normalised first).
        dtype: accumulation precision (float32, or float64).
        extra: also collect ``conv1.weight`` (unfolded patches) and ``proj`` (pooled ``ln_post`` output).
    """
    stats = TaskStats()
    acc = _Accumulator(stats, dtype)
    visual = visual.eval()
    device = device or next(visual.parameters()).device
    handles = _install_hooks(visual, acc, extra)
    try:
        for batch in _batches(images):
            x = normalize_images(batch) if batch.dtype == torch.uint8 else batch
            visual(x.to(device))
    finally:
        for h in handles:
            h.remove()
    stats.gram = {k: v.cpu() for k, v in stats.gram.items()}
    stats.sqnorm = {k: v.cpu() for k, v in stats.sqnorm.items()}
    return stats


def _visual_params(classifier) -> dict[str, nn.Parameter]:
    return dict(classifier.visual.named_parameters())


def fisher_diagonal(classifier, images: torch.Tensor, labels: torch.Tensor | None, *, device="cpu",
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Diagonal Fisher: mean over examples of the squared gradient of ``log p(y|x)``.

    ``labels`` None samples y from the model's prediction (the empirical Fisher uses the true labels).
    """
    classifier = classifier.to(device).eval()
    params = _visual_params(classifier)
    total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    for i in tqdm(range(len(images)), desc="fisher", mininterval=2.0, leave=False):
        logits = classifier(normalize_images(images[i:i + 1].to(device)))
        logp = F.log_softmax(logits, -1)[0]
        if labels is not None:
            y = int(labels[i])
        else:
            y = int(torch.multinomial(logp.detach().exp().cpu(), 1, generator=gen))
        grads = torch.autograd.grad(logp[y], list(params.values()), allow_unused=True)
        for (k, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                total[k] += g.detach().float() ** 2
    return {k: (v / len(images)).cpu() for k, v in total.items()}


def mean_abs_gradient(classifier, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 64,
                      device="cpu") -> dict[str, torch.Tensor]:
    """Mean over mini-batches of ``|∇ loss|`` (cross-entropy with the true labels), per parameter."""
    classifier = classifier.to(device).eval()
    params = _visual_params(classifier)
    total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    n_batches = 0
    for start in range(0, len(images), batch_size):
        logits = classifier(normalize_images(images[start:start + batch_size].to(device)))
        loss = F.cross_entropy(logits, labels[start:start + batch_size].to(device))
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (k, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                total[k] += g.detach().float().abs()
        n_batches += 1
    return {k: (v / max(1, n_batches)).cpu() for k, v in total.items()}
