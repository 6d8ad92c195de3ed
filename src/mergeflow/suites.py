"""Several suites in one run: a suites file lists the suites' own configurations.

    name: all-offline
    suites: [params.yaml, configs/text-offline.yaml]

Each listed file is a complete configuration of one suite (``suite: vision`` or ``text``) and stays the
source of its stages' parameters: ``mergeflow --params <suites file> dag`` writes the union of the suites'
DAGs (a suite whose file is not ``params.yaml`` runs its stages as ``mergeflow --params <its file> ...``) and
one more stage, the cross-suite report (``mergeflow --params <suites file> report``: a method × suite table of
normalised scores). One suite of each kind at most: a suite's artifacts have fixed folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergeflow.errors import MergeflowError
from mergeflow.workspace import check_path

KEYS = {"name", "suites"}


@dataclass(frozen=True)
class Suites:
    """A suites file: its name, where it was read from, and each suite's loaded configuration."""

    name: str
    source: str
    configs: tuple  # of mergeflow.config.Config, in the file's order

    suite = "all"

    @property
    def raw(self) -> dict[str, Any]:
        return {"name": self.name, "suites": [c.source for c in self.configs]}

    def of(self, suite: str):
        """The configuration of ``suite`` (vision or text), or None."""
        return next((c for c in self.configs if c.suite == suite), None)


def is_suites_file(raw: Any) -> bool:
    return isinstance(raw, dict) and "suites" in raw


def from_mapping(raw: dict, source: str, load) -> Suites:
    """Check a suites file and load each suite with ``load`` (:func:`mergeflow.config.load`)."""
    extra = set(raw) - KEYS
    if extra or "name" not in raw:
        raise MergeflowError(f"{source}: a suites file holds name and suites only "
                             f"({'unexpected ' + ', '.join(sorted(extra)) if extra else 'name is missing'})")
    files = raw["suites"]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise MergeflowError(f"{source}: suites must be a list of configuration files, e.g. [params.yaml, "
                             "configs/text-offline.yaml]")
    configs, kinds = [], {}
    for i, file in enumerate(files):
        check_path(f"suites[{i}]", file, source, absolute_ok=False)
        if not Path(file).is_file():
            raise MergeflowError(f"{source}: suites[{i}] = {file!r}: not found (paths are relative to the workspace)")
        cfg = load(file)
        if isinstance(cfg, Suites):
            raise MergeflowError(f"{source}: suites[{i}] = {file!r} is itself a suites file")
        if cfg.suite in kinds:
            raise MergeflowError(f"{source}: {kinds[cfg.suite]} and {file} are both {cfg.suite} suites; one of each "
                                 "kind (their artifacts share fixed folders)")
        kinds[cfg.suite] = file
        configs.append(cfg)
    return Suites(str(raw["name"]), source, tuple(configs))
