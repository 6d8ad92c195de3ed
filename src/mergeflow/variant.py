"""A statistics artifact's identity: which statistics, of which model, on how many exemplars, from which seed.

Its own module so that the method registry (which says which variants a method needs) and the
configuration (which lists the variants of every configured run) both import it without importing each
other.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergeflow.errors import MergeflowError


@dataclass(frozen=True)
class Variant:
    """A statistics artifact: which statistics, of which model, on how many exemplars, from which seed.

    The model is ``θ_pre + scale · T_k`` (scale 0: the pre-trained encoder; 1: the expert). The name is
    what the engines put in the path, ``data/features/<name>/<task>.safetensors``; the scale is kept as
    written in params.yaml so that DVC's interpolation and ours spell it the same way. Scale ``auto``
    (CAT with its α chosen on validation) stands for one set of statistics per non-zero value of
    ``evaluate.scale_grid``, stored as ``<task>.a<value>.safetensors`` in the same folder.
    """

    kind: str  # gram | fisher | grad
    scale: str
    count: int
    seed: int

    KINDS = ("gram", "fisher", "grad")

    @property
    def name(self) -> str:
        return f"{self.kind}-a{self.scale}-n{self.count}-s{self.seed}"

    @property
    def scale_value(self) -> float:
        if self.is_grid:
            raise MergeflowError(f"variant {self.name}: scale auto stands for every value of evaluate.scale_grid")
        return float(self.scale)

    @property
    def is_grid(self) -> bool:
        return self.scale == "auto"

    @classmethod
    def parse(cls, name: str) -> Variant:
        """Parse ``<kind>-a<scale>-n<count>-s<seed>``; anything else is a :class:`MergeflowError`."""
        try:
            kind, a, n, s = name.split("-")
            if kind not in cls.KINDS or a[0] != "a" or n[0] != "n" or s[0] != "s":
                raise ValueError
            if a[1:] != "auto":
                float(a[1:])
            return cls(kind, a[1:], int(n[1:]), int(s[1:]))
        except (ValueError, IndexError):
            raise MergeflowError(
                f"unknown features variant {name!r}; expected <kind>-a<scale>-n<count>-s<seed> with kind one of "
                f"{', '.join(cls.KINDS)} (e.g. gram-a0.4-n2-s0; scale auto: one per value of "
                "evaluate.scale_grid)") from None
