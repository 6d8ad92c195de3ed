"""The CAT and LOT papers' claims (and the 2025 methods' own), checked against one run's results.

Each claim is a comparison of average test accuracy (or of the spread of per-task drops) between runs of
the same pipeline. A claim whose runs are missing is "not run"; one that does not hold is "failed" and
shown with its numbers: the point is to report the outcome, not to tune it away.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    outcome: str  # held | failed | not run
    evidence: str


def _avg(summary: pd.DataFrame, model: str) -> float | None:
    row = summary[summary["model"] == model]
    return None if row.empty or pd.isna(row["average"].iloc[0]) else float(row["average"].iloc[0])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _beats(summary, text, source, winner, loser) -> Claim:
    a, b = _avg(summary, winner), _avg(summary, loser)
    if a is None or b is None:
        missing = winner if a is None else loser
        return Claim(text, source, "not run", f"{missing} is not in this run")
    outcome = "held" if a > b else "failed"
    evidence = f"{winner} {_pct(a)} vs {loser} {_pct(b)} ({100 * (a - b):+.1f} points)"
    if outcome == "failed":  # the sweeps say whether another setting of the winner's would have held it
        better = [(m, _avg(summary, m)) for m in summary["model"] if str(m).startswith(f"{winner}--")]
        better = [f"{m} {_pct(v)}" for m, v in better if v is not None and v > b]
        if better:
            evidence += f"; sweep runs above {loser}: {', '.join(better)}"
    return Claim(text, source, outcome, evidence)


def _lowest_drop_std(summary: pd.DataFrame, methods: list[str]) -> Claim:
    text = "CAT and LOT have the lowest standard deviation of per-task drops"
    single = summary[summary["model"].isin(methods) & summary["drop_std"].notna()]
    missing = [m for m in ("cat", "lot") if m not in set(single["model"])]
    if missing:
        return Claim(text, "CAT Table 1, LOT Table 1", "not run", f"{', '.join(missing)} not in this run")
    ranked = single.sort_values("drop_std")["model"].tolist()
    held = set(ranked[:2]) == {"cat", "lot"}
    listing = ", ".join(f"{m} {_pct(float(single.loc[single['model'] == m, 'drop_std'].iloc[0]))}" for m in ranked)
    return Claim(text, "CAT Table 1, LOT Table 1", "held" if held else "failed", f"drop std (points), lowest first: "
                 f"{listing}")


def _lot_exemplars(summary: pd.DataFrame, counts: dict[int, str]) -> Claim:
    text = "LOT improves as exemplars grow"
    points = [(n, _avg(summary, run)) for n, run in sorted(counts.items())]
    points = [(n, a) for n, a in points if a is not None]
    if len(points) < 2:
        return Claim(text, "LOT Figure (exemplars 4 → 64)", "not run", "fewer than two exemplar counts in this run")
    rising = all(b[1] >= a[1] for a, b in zip(points, points[1:], strict=False))
    evidence = " → ".join(f"{n}: {_pct(a)}" for n, a in points)
    return Claim(text, "LOT Figure (exemplars 4 → 64)", "held" if rising else "failed", evidence)


def check_claims(summary: pd.DataFrame, lot_exemplar_runs: dict[int, str]) -> list[Claim]:
    """Every claim of the papers that this run can test, in the order the papers make them.

    Args:
        summary: one row per model with ``model``, ``average`` and ``drop_std`` (fractions).
        lot_exemplar_runs: exemplar count → the run name of LOT with that many exemplars.
    """
    # the papers' tables rank training-free single models; AdaMerging, Surgery and task-aware results are apart
    apart = {c for c in ("task_aware", "training") if c in summary}
    rows = summary[~summary[list(apart)].fillna(False).astype(bool).any(axis=1)] if apart else summary
    single = [m for m in rows["model"] if m not in ("zeroshot", "individual") and "--" not in m]
    return [
        _beats(summary, "Task arithmetic beats the zero-shot model", "Ilharco et al.; CAT/LOT Table 1",
               "task_arithmetic", "zeroshot"),
        _beats(summary, "TIES beats task arithmetic", "CAT Table 1", "ties", "task_arithmetic"),
        _beats(summary, "PCB beats TIES", "CAT Table 1", "pcb", "ties"),
        _beats(summary, "CAT beats task arithmetic", "CAT Table 1", "cat", "task_arithmetic"),
        _beats(summary, "CAT beats PCB", "CAT Table 1", "cat", "pcb"),
        _beats(summary, "LOT beats CAT", "LOT Table 1", "lot", "cat"),
        _lowest_drop_std(summary, single),
        _lot_exemplars(summary, lot_exemplar_runs),
        # the 2025 training-free methods' own claims (algorithms.md §7)
        _beats(summary, "Iso-CTS beats Iso-C", "Marczak et al. 2025, Table 4", "iso_cts", "iso_c"),
        _beats(summary, "WUDI-Merging beats task arithmetic without a tuned scale", "Cheng et al. 2025, README",
               "wudi", "task_arithmetic"),
        _beats(summary, "CART beats task arithmetic", "Choi et al., README", "cart", "task_arithmetic"),
        _beats(summary, "DOGE-TA beats task arithmetic", "Wei et al. 2025, abstract", "doge_ta", "task_arithmetic"),
        _beats(summary, "AWD beats task arithmetic", "LOT Table 1 (AWD row)", "awd", "task_arithmetic"),
    ]
