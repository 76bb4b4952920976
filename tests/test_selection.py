"""Label-free model selection criteria on crafted evaluation histories."""

import json

import pytest

from dann_dist.report import selection


def entry(step, val, entropy, target, source=0.9):
    return {"step": step, "source_val_accuracy": val, "target_entropy": entropy,
            "target_accuracy": target, "source_accuracy": source}


# A run whose classifier collapses at step 400: one class everywhere, so near-zero entropy
# (the lowest of the run) and a source validation accuracy far below the best.
HISTORY = [
    entry(100, 0.80, 1.50, 0.40),
    entry(200, 0.95, 0.90, 0.55),
    entry(300, 0.97, 0.60, 0.62),
    entry(400, 0.11, 0.01, 0.10),  # collapsed
    entry(500, 0.98, 0.70, 0.58),
    entry(600, 0.96, 0.75, 0.70),  # best target accuracy: only the oracle may pick it
]


def steps(chosen):
    return {name: (e["step"] if e else None) for name, e in chosen.items()}


def test_each_criterion_picks_its_evaluation():
    chosen = selection.select_all(HISTORY, guard=0.02)
    assert steps(chosen) == {"final": 600, "source_val": 500, "entropy": 300, "oracle": 600}


def test_entropy_guard_excludes_the_collapsed_low_entropy_evaluation():
    # Unguarded (any source validation accuracy allowed), the collapse wins: the failure mode.
    assert selection.select_entropy(HISTORY, guard=1.0)["step"] == 400
    # Guarded, candidates are within 2 points of the best source validation accuracy (0.98):
    # steps 300, 500 (600 is at 0.96, exactly on the edge, and included).
    assert selection.select_entropy(HISTORY, guard=0.02)["step"] == 300
    tight = [e for e in HISTORY if e["step"] != 300]
    assert selection.select_entropy(tight, guard=0.02)["step"] == 500
    assert selection.select_entropy(tight, guard=0.0)["step"] == 500
    assert selection.select_entropy(tight, guard=0.021)["step"] == 500  # 600 (0.75) > 500 (0.70)


def test_ties_go_to_the_later_step():
    history = [entry(10, 0.9, 0.5, 0.7), entry(20, 0.9, 0.5, 0.7), entry(30, 0.8, 0.9, 0.6)]
    chosen = selection.select_all(history, guard=0.05)
    assert steps(chosen) == {"final": 30, "source_val": 20, "entropy": 20, "oracle": 20}


def test_dedupe_keeps_the_last_line_of_a_repeated_step(tmp_path):
    # A run killed after its step-200 evaluation and resumed from the step-100 checkpoint
    # evaluates step 200 again; the second line is the one the resumed weights produced.
    lines = [entry(100, 0.90, 1.0, 0.5), entry(200, 0.99, 0.2, 0.9),
             entry(200, 0.93, 0.8, 0.6), entry(300, 0.95, 0.7, 0.65)]
    path = tmp_path / selection.EVAL_HISTORY
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 40')  # torn tail
    history = selection.read_history(str(path))
    assert [e["step"] for e in history] == [100, 200, 300]
    assert history[1]["source_val_accuracy"] == 0.93
    chosen = selection.select_all(history, guard=0.02)
    assert steps(chosen) == {"final": 300, "source_val": 300, "entropy": 300, "oracle": 300}
    # Out of order input is sorted by step.
    assert [e["step"] for e in selection.dedupe(lines[::-1])] == [100, 200, 300]
    assert selection.dedupe(lines[::-1])[1]["source_val_accuracy"] == 0.99


def test_oracle_is_labelled_as_using_target_labels_and_not_label_free():
    assert selection.CRITERIA["oracle"] == "oracle (uses target labels; not a valid selection)"
    assert "oracle" not in selection.LABEL_FREE
    assert set(selection.LABEL_FREE) == {"final", "source_val", "entropy"}


def test_missing_quantities_make_criteria_unavailable(tmp_path):
    assert selection.select_all([]) == {"final": None, "source_val": None, "entropy": None,
                                        "oracle": None}
    assert selection.read_history(str(tmp_path / "absent.jsonl")) == []
    # --source_holdout=0: no source validation, hence neither criterion that needs it.
    history = [{"step": 5, "target_entropy": 0.3, "target_accuracy": 0.5}]
    chosen = selection.select_all(history)
    assert steps(chosen) == {"final": 5, "source_val": None, "entropy": None, "oracle": 5}
    # Non-finite values are never picked.
    history = [entry(1, float("nan"), 0.1, 0.2), entry(2, 0.5, float("nan"), 0.3)]
    assert selection.select_source_val(history)["step"] == 2
    assert selection.select_entropy(history) is None


def test_reading_a_history_does_not_import_tensorflow():
    # The report's collect step reads many histories; TensorFlow's start-up is seconds.
    import subprocess
    import sys

    code = ("import sys; from dann_dist import rundir; from dann_dist.report import selection; "
            "assert selection.EVAL_HISTORY == rundir.EVAL_HISTORY; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("guard", [0.0, 0.02, 0.5])
def test_entropy_pick_is_always_near_the_best_source_validation(guard):
    chosen = selection.select_entropy(HISTORY, guard=guard)
    assert chosen["source_val_accuracy"] >= 0.98 - guard - 1e-9
