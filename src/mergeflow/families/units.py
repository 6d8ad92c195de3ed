"""What one parameter is to a merge method: its unit kind, the statistics that serve it, its matrix view.

A family's adapter (:mod:`mergeflow.families`) maps every parameter name of its models to a :class:`Unit`;
methods read units, never names, so that one method runs on every family (algorithms.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The unit kinds. ``linear``: a weight that multiplies an input (its statistics: the input's Gram);
#: ``scale``: a normalisation's scale (the normalised input's ``sqnorm``); ``shift``: an additive vector
#: (biases, LayerNorm shifts, a class token); ``embedding``: a lookup table whose rows are selected by ids
#: (token counts per row); ``other``: a parameter without statistics (every method's fallback rule);
#: ``head``: a per-task output layer, never merged (each task keeps its expert's); ``excluded``: not a
#: parameter of the model's function (index buffers), copied from the base.
KINDS = ("linear", "scale", "shift", "embedding", "other", "head", "excluded")


@dataclass(frozen=True)
class Unit:
    """One parameter as merge methods see it.

    Attributes:
        kind: one of :data:`KINDS`.
        site: the statistics key that serves it: for a linear unit the input's Gram, for a scale unit the
            normalised input, for an embedding the row counts. Weights that read one input share one site
            (q, k and v), named by the first of them. None where no statistic applies.
        input_major: a linear weight stored ``(d_in, d_out)`` (``y = x @ W``), transposed by :meth:`matrix`.
        blocks: row blocks of the ``(d_out, d_in)`` view that are separate units (3 for a packed q/k/v).
        option: for a weight that is a linear unit only when a method asks for it (open_clip's ``conv1`` and
            ``proj``), the name the method's option lists; otherwise the unit is ``other``.
        output_site: for a token embedding that a language model may tie to its output projection, that
            projection's statistics site (``lm_head.weight``): when the state dict holds no separate
            projection (a tied model, saved once), the table plays both roles.
        vocabulary: a linear unit whose outputs are the vocabulary's logits (an untied ``lm_head``): a method
            may leave it out of its linear rule (CAT does by default, algorithms.md §9).
    """

    kind: str
    site: str | None = None
    input_major: bool = False
    blocks: int = 1
    option: str | None = None
    output_site: str | None = None
    vocabulary: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown unit kind {self.kind!r}; known: {', '.join(KINDS)}")

    def resolved(self, options: tuple[str, ...] = (), vocabulary: bool = True) -> Unit:
        """The unit a method with linear options ``options`` sees: an optional linear unit not listed is
        ``other``, and so is a vocabulary projection when ``vocabulary`` is False."""
        if self.kind == "linear" and ((self.option is not None and self.option not in options)
                                      or (self.vocabulary and not vocabulary)):
            return Unit("other", self.site)
        return self

    def matrix(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ``(d_out, d_in)`` view of a linear weight (a transposed view for input-major storage)."""
        if self.input_major:
            return tensor.t()
        return tensor.reshape(tensor.shape[0], -1)

    def from_matrix(self, matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`matrix`: the weight's own layout and shape."""
        if self.input_major:
            return matrix.t().contiguous()
        return matrix.reshape(like.shape)

    def row_blocks(self, d_out: int, split: bool) -> list[slice]:
        """Row ranges that are separate units: q, k, v of a packed weight when ``split``, else one range."""
        if split and self.blocks > 1 and d_out % self.blocks == 0:
            w = d_out // self.blocks
            return [slice(i * w, (i + 1) * w) for i in range(self.blocks)]
        return [slice(0, d_out)]
