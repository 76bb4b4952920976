"""Model selection over the evaluations along one run (its eval_history.jsonl).

Unsupervised domain adaptation has no target labels, so a checkpoint cannot honestly be
chosen by target accuracy. The criteria here:

- `final`: the last evaluation (what dann_dist reports and exports).
- `source_val`: the highest accuracy on held-out labelled *source* images (the classic
  choice; blind to the domain shift, but uses no target labels).
- `entropy`: the lowest mean prediction entropy on unlabelled *target* training images,
  proposed for validation in unsupervised domain adaptation by Morerio, Cavazza & Murino,
  "Minimal-Entropy Correlation Alignment for Unsupervised Deep Domain Adaptation", ICLR
  2018. Known failure mode: a collapsed classifier (one class for every input) is very
  confident, hence has low entropy, while being useless. Guard: only evaluations whose
  source validation accuracy is within `guard` (absolute, default 0.02 = 2 points) of the
  run's best are candidates.
- `oracle`: the highest target test accuracy. It uses target labels and is NOT a valid
  selection: it is shown apart, as the ceiling of what any selection could reach.

Ties go to the later step. A resumed run may log an evaluation of the same step twice:
`dedupe` keeps the last line of each step.
"""

from __future__ import annotations

import json
import math
import os

from dann_dist.rundir import EVAL_HISTORY  # noqa: F401  (the name readers of a history use)

FINAL, SOURCE_VAL, ENTROPY, ORACLE = "final", "source_val", "entropy", "oracle"
ORACLE_LABEL = "oracle (uses target labels; not a valid selection)"
CRITERIA = {
    FINAL: "final (last step; what dann_dist reports and exports)",
    SOURCE_VAL: "source validation (argmax accuracy on held-out source images)",
    ENTROPY: "target entropy (argmin on unlabelled target images, Morerio et al. 2018; "
             "guarded by source validation)",
    ORACLE: ORACLE_LABEL,
}
LABEL_FREE = (FINAL, SOURCE_VAL, ENTROPY)
DEFAULT_GUARD = 0.02


def read_history(path: str) -> list[dict]:
    """The evaluations logged in `path` (one JSON object per line), deduplicated by step.
    A missing file is an empty history; a torn last line (a killed writer) is skipped."""
    if not os.path.exists(path):
        return []
    lines = []
    with open(path) as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return dedupe(lines)


def dedupe(lines: list[dict]) -> list[dict]:
    """One entry per step, the last logged one winning, sorted by step."""
    by_step = {}
    for line in lines:
        by_step[int(line["step"])] = line
    return [by_step[step] for step in sorted(by_step)]


def _finite(entry: dict, key: str) -> bool:
    value = entry.get(key)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _best(history: list[dict], key: str, maximise: bool) -> dict | None:
    """The entry with the best finite `key`; ties go to the later step."""
    best = None
    for entry in dedupe(history):  # sorted by step: `>=` / `<=` lets a later tie win
        if not _finite(entry, key):
            continue
        if best is None or (entry[key] >= best[key] if maximise else entry[key] <= best[key]):
            best = entry
    return best


def select_final(history: list[dict]) -> dict | None:
    history = dedupe(history)
    return history[-1] if history else None


def select_source_val(history: list[dict]) -> dict | None:
    return _best(history, "source_val_accuracy", maximise=True)


def select_entropy(history: list[dict], guard: float = DEFAULT_GUARD) -> dict | None:
    """argmin target_entropy among the evaluations whose source validation accuracy is
    at least (best source validation accuracy - guard). None without both quantities."""
    best_val = select_source_val(history)
    if best_val is None:
        return None
    floor = best_val["source_val_accuracy"] - guard - 1e-12
    candidates = [e for e in dedupe(history)
                  if _finite(e, "source_val_accuracy") and e["source_val_accuracy"] >= floor]
    return _best(candidates, "target_entropy", maximise=False)


def select_oracle(history: list[dict]) -> dict | None:
    """Uses target labels: for reference only, never a selection."""
    return _best(history, "target_accuracy", maximise=True)


def select_all(history: list[dict], guard: float = DEFAULT_GUARD) -> dict[str, dict | None]:
    """{criterion: the chosen evaluation (a history entry) or None if not computable}."""
    return {
        FINAL: select_final(history),
        SOURCE_VAL: select_source_val(history),
        ENTROPY: select_entropy(history, guard),
        ORACLE: select_oracle(history),
    }
