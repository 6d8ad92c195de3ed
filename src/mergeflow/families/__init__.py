"""Model families as adapters: what every parameter of a family's models is to a merge method.

A family is data: an ordered list of :class:`Rule` (a pattern over parameter names and the unit it
names), plus how its models are built, loaded and observed. Methods ask ``family.unit(key)`` and never
look at names, so a method written once merges every family (algorithms.md §1, §8).

>>> from mergeflow.families import get_family
>>> get_family("hf-encoder").unit("roberta.encoder.layer.0.attention.self.key.weight").site
'roberta.encoder.layer.0.attention.self.query.weight'

Adding a family: one module with its rules and a :class:`Family` registered with :func:`register_family`,
imported below.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import torch
from torch import nn

from mergeflow.errors import MergeflowError
from mergeflow.families.units import KINDS, Unit

__all__ = ["FAMILIES", "KINDS", "Family", "Rule", "Unit", "family_for_model_type", "get_family", "register_family"]


@dataclass(frozen=True)
class Rule:
    """Parameters whose name matches ``pattern`` (``re.search``) are ``kind`` units.

    ``site`` is a template expanded with the match (``\\g<name>`` groups; ``\\g<0>`` is the matched text):
    the statistics key that serves the unit; with ``site_is_key`` the parameter's own name is the site.
    ``output_site`` (a literal key) names the output projection a token embedding may be tied to;
    ``vocabulary`` marks a linear unit whose outputs are the vocabulary's logits.
    """

    pattern: str
    kind: str
    site: str | None = None
    site_is_key: bool = False
    input_major: bool = False
    blocks: int = 1
    option: str | None = None
    output_site: str | None = None
    vocabulary: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"rule {self.pattern!r}: unknown unit kind {self.kind!r}")

    @property
    def regex(self) -> re.Pattern:
        return _compiled(self.pattern)

    def unit(self, key: str, match: re.Match) -> Unit:
        site = key if self.site_is_key else (key[:match.start()] + match.expand(self.site) if self.site else None)
        return Unit(self.kind, site, self.input_major, self.blocks, self.option, self.output_site,
                    self.vocabulary)


@cache
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


@dataclass(frozen=True)
class Family:
    """A model family's adapter.

    Attributes:
        name: the registry name (``model.family`` in params.yaml).
        description: what models it covers.
        rules: first match wins; a parameter no rule matches is an error naming it.
        statistics: ``statistics(model, batches, *, dtype, **options) -> TaskStats``: runs the model with the
            hooks that record every site's statistic (Grams, normalised-input energies, row counts).
        build: ``build(config) -> nn.Module`` from the family's configuration (a name or a dict).
        load: ``load(folder) -> nn.Module`` from a saved folder (no network).
        model_types: the ``model_type`` values of Hugging Face configs the family covers.
        check_config: ``check_config(config, shapes, source)``: refuses a config whose sizes differ from the
            weights' (``shapes``: name to shape), in one line naming ``source``.
    """

    name: str
    description: str
    rules: tuple[Rule, ...]
    statistics: Callable[..., object] | None = field(default=None, compare=False)
    build: Callable[..., nn.Module] | None = field(default=None, compare=False)
    load: Callable[..., nn.Module] | None = field(default=None, compare=False)
    model_types: tuple[str, ...] = ()
    check_config: Callable[[dict, dict, str], None] | None = field(default=None, compare=False)

    def unit(self, key: str) -> Unit:
        """The unit of parameter ``key``; a :class:`MergeflowError` naming it when no rule does."""
        return _unit(self, key)

    def units(self, state: dict[str, torch.Tensor]) -> dict[str, Unit]:
        """Every parameter of ``state`` classified (the first unclassified one is an error)."""
        return {k: self.unit(k) for k in state}

    def merged_part(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors methods merge and return: all but per-task heads (index buffers are copied)."""
        return {k: v for k, v in state.items() if self.unit(k).kind != "head"}

    def heads(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-task head tensors of ``state`` (each task keeps its expert's)."""
        return {k: v for k, v in state.items() if self.unit(k).kind == "head"}

    def layer_groups(self, keys: list[str]) -> list[list[str]]:
        """``keys`` grouped by numbered block (``...layers.7.``, ``...resblocks.7.``, ``...h.7.``), in order of
        first appearance; every other key alone, but a token table together with the output projection it may
        be tied to (both have a row per vocabulary entry): what a streamed merge or a statistics pass holds
        in memory at a time."""
        present = set(keys)
        partner = {}
        for key in keys:
            site = self.unit(key).output_site
            if site is not None and site in present:
                partner[site] = key
        groups: dict[str, list[str]] = {}
        for key in keys:
            m = _BLOCK.match(key)
            groups.setdefault(m.group(1) if m else partner.get(key, key), []).append(key)
        return list(groups.values())


_BLOCK = re.compile(r"^(.*?\.\d+)\.")  # the numbered block a parameter belongs to


@cache
def _unit(family: Family, key: str) -> Unit:
    for rule in family.rules:
        match = rule.regex.search(key)
        if match:
            return rule.unit(key, match)
    raise MergeflowError(f"{family.name}: parameter {key!r} is not classified by any rule of the adapter "
                         f"(mergeflow.families); a new parameter needs a rule saying what it is")


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    FAMILIES[family.name] = family
    return family


def get_family(name: str | Family) -> Family:
    """The adapter named ``name`` (an adapter is returned as is)."""
    if isinstance(name, Family):
        return name
    try:
        return FAMILIES[name]
    except KeyError:
        raise MergeflowError(f"model.family: unknown family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_for_model_type(model_type: str | None, source: str) -> Family:
    """The adapter whose Hugging Face models have ``model_type`` (a ``config.json``'s); ``source`` names the
    file in the error when no family covers it."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise MergeflowError(f"{source}: model_type {model_type!r} is not one mergeflow has an adapter for; known: "
                         f"{', '.join(known)}")


from mergeflow.families import hf_decoder, hf_encoder, open_clip_vit  # noqa: E402,F401  (each import registers its family)
