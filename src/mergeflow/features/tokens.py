"""Layer statistics of token-sequence models by forward hooks that honour the attention mask.

Which module records what is read off the family's adapter: an ``nn.Linear`` (or GPT-2's ``Conv1D``) whose
weight is the first of its site records the Gram of its input, an ``nn.LayerNorm`` or RMSNorm scale unit the
``sqnorm`` of its normalised input (RMSNorm: divided by the root mean square, not centred), an
``nn.Embedding`` the count of each row looked up. Only real tokens enter: rows of a ``(B, L, ·)`` input (or
``(B, L, heads, ·)``) where the batch's attention mask is 0 (padding) are dropped before any sum, so a padded
batch gives the statistics of its sequences run one by one. A 2-D input (a pooler's first token) is one row
per sequence, always real.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from mergeflow.errors import MergeflowError
from mergeflow.features.stats import WEIGHTINGS, TaskStats


class _TokenAccumulator:
    def __init__(self, stats: TaskStats, dtype: torch.dtype):
        self.stats, self.dtype = stats, dtype
        self.mask: torch.Tensor | None = None  # (B, L) bool of the batch in progress

    def real(self, x: torch.Tensor, site: str) -> torch.Tensor:
        """The rows of ``x`` that are real tokens: ``(rows, ·)`` (or ``(rows,)`` for ids)."""
        if x.is_floating_point() and x.ndim > self.mask.ndim + 1 and tuple(x.shape[:2]) == tuple(self.mask.shape):
            return x[self.mask].reshape(-1, x.shape[-1])  # per-head inputs (B, L, heads, d): Qwen3's q/k norms
        if x.ndim == self.mask.ndim + (0 if x.dtype in (torch.int64, torch.int32) else 1):
            if x.shape[0] == 1 and self.mask.shape[0] > 1:  # ids shared by the batch (BERT's position ids)
                x = x.expand(self.mask.shape[0], *x.shape[1:])
            if tuple(x.shape[:2]) != tuple(self.mask.shape):
                raise MergeflowError(f"statistics of {site}: input of shape {tuple(x.shape)} does not match the "
                                     f"attention mask {tuple(self.mask.shape)}")
            return x[self.mask]
        return x.reshape(-1, x.shape[-1]) if x.is_floating_point() else x.reshape(-1)

    def add(self, field: str, site: str, value: torch.Tensor, rows: int) -> None:
        store = getattr(self.stats, field)
        store[site] = store[site] + value if site in store else value
        self.stats.rows[site] = self.stats.rows.get(site, 0) + rows

    def gram(self, site: str, mod, args) -> None:
        x = self.real(args[0], site).to(self.dtype)
        self.add("gram", site, x.t() @ x, x.shape[0])

    def sqnorm(self, site: str, mod: nn.Module, args, out) -> None:
        x = self.real(args[0], site).to(self.dtype)
        if isinstance(mod, nn.LayerNorm):
            xhat = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + mod.eps)
        else:  # RMSNorm: no centring
            xhat = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + _rms_eps(mod))
        self.add("sqnorm", site, (xhat ** 2).sum(0), x.shape[0])

    def counts(self, site: str, mod: nn.Embedding, args) -> None:
        ids = self.real(args[0], site)
        value = torch.bincount(ids.reshape(-1).cpu(), minlength=mod.num_embeddings).to(torch.float64)
        self.add("counts", site, value, ids.numel())


def _rms_eps(mod: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):  # transformers' LLaMA-style norms, torch's nn.RMSNorm
        value = getattr(mod, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return float(torch.finfo(torch.float32).eps)


def _is_rms_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.RMSNorm) or type(module).__name__.endswith("RMSNorm")


def _is_linear(module: nn.Module) -> bool:
    """``nn.Linear``, or GPT-2's ``Conv1D`` (``y = x @ W + b``, input-major): both read their input as is."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def observed_sites(model: nn.Module, family) -> dict[str, nn.Module]:
    """Every site of ``family`` that ``model`` observes, with its module, in module order (a module's weight
    key names its unit; k and v read q's input, so they add no site)."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        key = f"{name}.weight" if name else "weight"
        unit = family.unit(key)
        if unit.site != key:
            continue
        if ((_is_linear(module) and unit.kind == "linear")
                or ((isinstance(module, nn.LayerNorm) or _is_rms_norm(module)) and unit.kind == "scale")
                or (isinstance(module, nn.Embedding) and unit.kind == "embedding")):
            out[key] = module
    return out


def install_hooks(model: nn.Module, family, acc: _TokenAccumulator, sites: set[str] | None = None) -> list:
    """One hook per module that observes a site of ``family`` (only those in ``sites`` when given)."""
    handles = []
    for key, module in observed_sites(model, family).items():
        if sites is not None and key not in sites:
            continue
        unit = family.unit(key)
        if _is_linear(module) and unit.kind == "linear":
            handles.append(module.register_forward_pre_hook(partial(_TokenAccumulator.gram, acc, key)))
        elif (isinstance(module, nn.LayerNorm) or _is_rms_norm(module)) and unit.kind == "scale":
            handles.append(module.register_forward_hook(partial(_TokenAccumulator.sqnorm, acc, key)))
        elif isinstance(module, nn.Embedding) and unit.kind == "embedding":
            handles.append(module.register_forward_pre_hook(partial(_TokenAccumulator.counts, acc, key)))
    return handles


def _batches(batches) -> Iterable[Mapping[str, torch.Tensor]]:
    if isinstance(batches, Mapping):
        yield batches
    else:
        yield from batches


@torch.inference_mode()
def collect_token_stats(model: nn.Module, batches, family, *, dtype: torch.dtype = torch.float32,
                        weighting: str = "tokens", device: torch.device | str | None = None,
                        sites: set[str] | None = None) -> TaskStats:
    """Grams, normalised-input energies and embedding row counts of ``model`` over real tokens.

    Args:
        model: a ``transformers`` encoder or task model of ``family``.
        batches: a batch or an iterable of batches, each a mapping with ``input_ids`` and ``attention_mask``
            ``(B, L)`` (and optionally ``token_type_ids``).
        family: the adapter (:mod:`mergeflow.families`) that names every module's unit.
        dtype: accumulation precision (float32, or float64).
        weighting: ``tokens`` or ``task`` (:class:`TaskStats`).
        sites: record these sites only (every site the model observes when None).
    """
    if weighting not in WEIGHTINGS:
        raise MergeflowError(f"features.weighting: {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    stats = TaskStats()
    acc = _TokenAccumulator(stats, dtype)
    model = model.eval()
    device = device or next(model.parameters()).device
    handles = install_hooks(model, family, acc, sites)
    try:
        for batch in tqdm(_batches(batches), desc="statistics", unit="batch", leave=False, mininterval=5.0):
            if "attention_mask" not in batch or "input_ids" not in batch:
                raise MergeflowError("statistics: a batch needs input_ids and attention_mask")
            acc.mask = batch["attention_mask"].to(device).bool()
            model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
    for name in ("gram", "sqnorm", "counts"):
        setattr(stats, name, {k: v.cpu() for k, v in getattr(stats, name).items()})
    return stats.per_task() if weighting == "task" else stats


def write_token_stats(model: nn.Module, batches, family, out: str | Path, *, layers_per_pass: int = 1,
                      metadata: dict[str, str] | None = None, **options) -> Path:
    """:func:`collect_token_stats` written to ``out`` a few layers at a time, so that only those layers'
    statistics are ever in memory (a LLaMA-8B layer's Grams are ~1 GB in float32; the model's, 32 GB).

    Each pass runs every batch through the model with hooks on ``layers_per_pass`` groups of sites only (a
    numbered block, or a token table with its output projection: :meth:`mergeflow.families.Family.layer_groups`)
    and saves them; the parts are then joined one tensor at a time. The result is the same bytes as
    ``save_tensors(out, collect_token_stats(...).to_tensors(), metadata)``; the price is one forward pass over
    the batches per pass. ``batches`` must be iterable more than once (a list).
    """
    import tempfile

    from mergeflow.io import save_tensors
    from mergeflow.safetensors_file import concatenate

    if layers_per_pass < 1:
        raise MergeflowError(f"statistics: layers_per_pass must be at least 1, not {layers_per_pass}")
    groups = family.layer_groups(list(observed_sites(model, family)))
    passes = [sum(groups[i:i + layers_per_pass], []) for i in range(0, len(groups), layers_per_pass)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        parts = []
        for i, keys in enumerate(tqdm(passes, desc="statistics by layer", unit="pass", leave=False)):
            stats = collect_token_stats(model, batches, family, sites=set(keys), **options)
            parts.append(Path(tmp) / f"{i}.safetensors")
            save_tensors(parts[-1], stats.to_tensors())
            del stats
        concatenate(parts, out, metadata)
    return out


def _log_likelihood(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example log-likelihood: of the class for a classifier, of the score under a unit-variance Gaussian
    for a one-output (regression) model."""
    if logits.shape[-1] == 1:
        return -0.5 * (logits.squeeze(-1) - target.float()) ** 2
    return torch.log_softmax(logits, -1).gather(-1, target.long().view(-1, 1)).squeeze(-1)


def _body(model: nn.Module, family) -> dict[str, nn.Parameter]:
    return {k: p for k, p in model.named_parameters() if family.unit(k).kind not in ("head", "excluded")}


def token_fisher(model: nn.Module, batch: Mapping[str, torch.Tensor], labels: torch.Tensor | None, family, *,
                 seed: int = 0, device="cpu") -> dict[str, torch.Tensor]:
    """Diagonal Fisher of a text classifier's body: the mean over sequences of the squared gradient of
    ``log p(y|x)`` (``labels`` None: y drawn from the model), one sequence at a time (padding never counts:
    each sequence is cut to its real tokens)."""
    model = model.to(device).eval()
    params = _body(model, family)
    total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    n = len(batch["input_ids"])
    for i in tqdm(range(n), desc="fisher", mininterval=2.0, leave=False):
        length = int(batch["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :length].to(device) for k, v in batch.items()}
        logits = model(**one).logits
        if labels is not None:
            target = labels[i:i + 1].to(device)
        elif logits.shape[-1] == 1:
            target = (logits.detach() + torch.randn(logits.shape, generator=gen).to(device)).squeeze(-1)
        else:
            target = torch.multinomial(torch.softmax(logits.detach(), -1).cpu(), 1, generator=gen).view(-1).to(device)
        grads = torch.autograd.grad(_log_likelihood(logits, target).sum(), list(params.values()), allow_unused=True)
        for (k, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                total[k] += g.detach().float() ** 2
    return {k: (v / max(1, n)).cpu() for k, v in total.items()}


def token_gradient(model: nn.Module, batch: Mapping[str, torch.Tensor], labels: torch.Tensor, family, *,
                   batch_size: int = 64, device="cpu") -> dict[str, torch.Tensor]:
    """Mean over mini-batches of ``|∇ loss|`` of a text classifier's body (cross-entropy, or squared error for
    a regression), at the weights ``model`` holds (TATR: the pre-trained body with the task's head)."""
    model = model.to(device).eval()
    params = _body(model, family)
    total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    n, batches = len(batch["input_ids"]), 0
    for start in range(0, n, batch_size):
        part = {k: v[start:start + batch_size].to(device) for k, v in batch.items()}
        loss = -_log_likelihood(model(**part).logits, labels[start:start + batch_size].to(device)).mean()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (k, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                total[k] += g.detach().float().abs()
        batches += 1
    return {k: (v / max(1, batches)).cpu() for k, v in total.items()}
