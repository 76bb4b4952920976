"""Steps to target: the scaling study's measure of data parallelism (Shallue et al. 2018,
"Measuring the effects of data parallelism on neural network training"; MLPerf Training's
time-to-train), with the gradient noise scale B_simple the runs logged beside it
(McCandlish et al. 2018, "An empirical model of large-batch training"), and its plot.

Per global batch B, method and seed: the first evaluated step whose target test accuracy
reaches the target (fixed before the study), its example count (step x B), the final
accuracy and whether the run diverged (a NaN/Inf in its evaluations or final metrics, or a
non-finite loss or weight in its train.log) or failed (its log ends in an error that is not
a stop to resume). A seed that never reaches the target within its budget, or diverges or
fails first, counts as not reaching it: MLPerf counts it as the slowest, so it enters the
median as +inf (report.json writes that as Infinity, as Python's json does). A run still
unfinished that has not reached the target yet is left out ("pending"); one that is missing
too. Per B: the median over the counted seeds, how many reach, the speed-up in steps over
the smallest B of the same method (median(B0) / median(B); perfect scaling is B / B0), and
how finely the evaluations resolve the step (eval_every / train_steps).
"""

from __future__ import annotations

import math
import os
import re
import statistics

from dann_dist import rundir
from dann_dist.report import selection
from dann_dist.report.feature_plots import figure_png
from dann_dist.report.options import NAMES, ORDER, TRAIN_LOG
from dann_dist.report.runs import log_tail
from dann_dist.report.tables import shared

PLOT = "steps_to_target.png"
NOISE_PATHS = ("classification", "domain")
RESOLUTION_GOAL = 0.05  # steps to target resolved to about 5% of the run (issue 19)
COUNTED = ("finished", "diverged", "failed")  # statuses whose miss counts as +inf
_NON_FINITE_LOG = re.compile(r"non-finite (loss|weights) at step \d+")
_RESUMABLE = "rerun the same command to resume"
NOISE_NOTE = (
    "B_simple = tr(Sigma) / |G|^2, the simple gradient noise scale (McCandlish et al. 2018, "
    "\"An empirical model of large-batch training\"): roughly the batch size beyond which a "
    "larger batch, hence more devices, stops cutting the steps. Per B: the median over seeds "
    "of each run's last finite estimate, and in brackets of each run's median over its "
    "evaluations (classification path; reversed domain gradient).")


def first_reaching(history: list[dict], target: float) -> dict | None:
    """The first evaluation (by step) whose target accuracy reaches `target`."""
    for entry in selection.dedupe(history):
        accuracy = entry.get("target_accuracy")
        if _finite(accuracy) and accuracy >= target:
            return entry
    return None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def non_finite_keys(entry: dict) -> list[str]:
    """The NaN/Inf numbers of an evaluation or of final metrics, apart from the noise scale
    estimates (NaN there only means that no estimate was possible)."""
    return sorted(k for k, v in entry.items() if isinstance(v, float) and not math.isfinite(v)
                  and not k.startswith("noise_scale"))


def noise_summary(history: list[dict], path: str) -> dict:
    """The last finite noise_scale_<path> of a run and the median of its finite ones."""
    values = [e[f"noise_scale_{path}"] for e in selection.dedupe(history)
              if _finite(e.get(f"noise_scale_{path}"))]
    return {"last": float(values[-1]) if values else None,
            "median": float(statistics.median(values)) if values else None, "n": len(values)}


def _log_verdict(model_dir: str) -> tuple[str | None, str | None]:
    """(divergence, failure) read from the trainer's log: the non-finite error it ever
    printed, and the error its last line reports when that is not a stop to resume."""
    text = log_tail(os.path.join(model_dir, TRAIN_LOG), 10 ** 6)
    match = _NON_FINITE_LOG.search(text)
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    failed = last if last.startswith("error:") and _RESUMABLE not in last else None
    return (match.group(0) if match else None), failed


def _divergence(history: list[dict], metrics: dict | None, logged: str | None) -> str | None:
    for entry in selection.dedupe(history):
        bad = non_finite_keys(entry)
        if bad:
            return f"non-finite {', '.join(bad)} at step {entry['step']}"
    if metrics and non_finite_keys(metrics):
        return f"non-finite final {', '.join(non_finite_keys(metrics))}"
    return logged


def _run_files(run: dict) -> tuple[dict, dict | None, list[dict]] | None:
    """(run.json record, final metrics or None, history) of a run; None without run.json."""
    if run["result"] is not None:
        result = run["result"]
        return ({"config": result["config"], "derived": result["derived"]}, result["metrics"],
                result["history"])
    record = rundir.read_json(rundir.path(run["model_dir"], rundir.RUN_RECORD))
    if record is None:
        return None
    history = selection.read_history(rundir.path(run["model_dir"], rundir.EVAL_HISTORY))
    return record, None, history


def seed_entry(run: dict, target: float) -> dict:
    """One seed: its status, the first step (and examples) at the target, its final (or,
    unfinished, last evaluated) target accuracy, divergence and noise scale estimates."""
    entry = {"seed": run["seed"], "status": "missing", "reached": False, "counted": False,
             "step": None, "examples": None, "train_seconds": None, "train_steps": None,
             "eval_every": None, "target_accuracy": None, "diverged": False,
             "divergence": None, "failure": None,
             "noise_scale": {p: noise_summary([], p) for p in NOISE_PATHS}}
    files = _run_files(run)
    if files is None:
        return entry
    record, metrics, history = files
    config, derived = record["config"], record.get("derived") or {}
    logged, failure = _log_verdict(run["model_dir"])
    divergence = _divergence(history, metrics, logged)
    status = ("finished" if metrics is not None else "diverged" if divergence
              else "failed" if failure else "incomplete")
    batch = derived.get("global_batch_per_domain") or config.get("batch_size")
    first = first_reaching(history, target)
    last = selection.dedupe(history)[-1] if history else {}
    entry.update(
        status=status, reached=first is not None, counted=first is not None or status in COUNTED,
        step=first["step"] if first else None,
        examples=first["step"] * batch if first and batch else None,
        train_seconds=first.get("train_seconds") if first else None,
        train_steps=config.get("train_steps"), eval_every=config.get("eval_every"),
        target_accuracy=(metrics or last).get("target_accuracy"),
        diverged=divergence is not None, divergence=divergence,
        failure=failure if status == "failed" else None,
        noise_scale={p: noise_summary(history, p) for p in NOISE_PATHS})
    return entry


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def eval_resolution(eval_every, train_steps) -> float | None:
    """The fraction of the run between two evaluations (1 when only the end is evaluated)."""
    if not isinstance(eval_every, int) or not isinstance(train_steps, int) or train_steps < 1:
        return None
    return 1.0 if eval_every <= 0 else min(eval_every, train_steps) / train_steps


def speedup(reference: float | None, median: float | None) -> float | None:
    """median(B0) / median(B): 0 when B never reaches the target, inf when only B does,
    None when neither does or a median is missing."""
    if reference is None or median is None or (math.isinf(reference) and math.isinf(median)):
        return None
    return math.inf if math.isinf(reference) else reference / median


def target_row(batch_size: int, adaptation: str, runs: list[dict], target: float) -> dict:
    """One (B, method) row over its seeds; the speed-up columns are filled by the table."""
    seeds = [seed_entry(run, target) for run in runs]
    counted = [s for s in seeds if s["counted"]]
    steps = [s["step"] if s["reached"] else math.inf for s in counted]
    median_steps = _median(steps)
    known = [s for s in seeds if s["train_steps"] is not None]
    train_steps = shared([s["train_steps"] for s in known]) if known else None
    eval_every = shared([s["eval_every"] for s in known]) if known else None
    resolution = eval_resolution(eval_every, train_steps)
    noise = {p: {"last": _median([s["noise_scale"][p]["last"] for s in seeds
                                  if s["noise_scale"][p]["last"] is not None]),
                 "median": _median([s["noise_scale"][p]["median"] for s in seeds
                                    if s["noise_scale"][p]["median"] is not None]),
                 "seeds": sum(s["noise_scale"][p]["n"] > 0 for s in seeds)}
             for p in NOISE_PATHS}
    return {
        "batch_size": batch_size, "adaptation": adaptation, "per_seed": seeds,
        "seeds": len(seeds), "counted": len(counted), "reached": sum(s["reached"] for s in seeds),
        "diverged": sum(s["diverged"] for s in seeds),
        "pending": [s["seed"] for s in seeds if not s["counted"]],
        "median_steps": median_steps,
        "median_examples": None if median_steps is None else median_steps * batch_size,
        "train_steps": train_steps, "eval_every": eval_every, "eval_resolution": resolution,
        "resolved": resolution is not None and resolution <= RESOLUTION_GOAL,
        "noise_scale": noise,
    }


def steps_to_target_table(runs_by_batch: dict[int, dict], target: float,
                          given_as: str) -> dict:
    """runs_by_batch: {B: {(adaptation, seed): run}} (the runs of each B's report). Rows for
    the (B, method) pairs with a finished run, each with every requested seed."""
    rows = []
    for adaptation in ORDER:
        for batch_size in sorted(runs_by_batch):
            runs = [r for (a, _), r in sorted(runs_by_batch[batch_size].items())
                    if a == adaptation]
            if any(r["result"] for r in runs):
                rows.append(target_row(batch_size, adaptation, runs, target))
    for adaptation in ORDER:
        own = [r for r in rows if r["adaptation"] == adaptation]
        for row in own:
            row["reference_batch"] = own[0]["batch_size"]
            row["perfect_scaling"] = row["batch_size"] / own[0]["batch_size"]
            row["speedup_steps"] = speedup(own[0]["median_steps"], row["median_steps"])
    return {"target_accuracy": target, "given_as": given_as,
            "fixed_before_study": given_as.startswith("--target_accuracy"),
            "resolution_goal": RESOLUTION_GOAL, "rows": rows, "plot": PLOT}


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "not reached"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{digits}g}"


def _speed(value) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.2f}x"


def _resolution(row: dict) -> str:
    if row["eval_resolution"] is None:
        return f"{row['eval_every']} / {row['train_steps']}"
    flag = "" if row["resolved"] else f", coarser than {RESOLUTION_GOAL:.0%}"
    return (f"{row['eval_every']} / {row['train_steps']} "
            f"({row['eval_resolution']:.1%}{flag})")


def _noise(summary: dict) -> str:
    if summary["last"] is None:
        return "-"
    return f"{_number(summary['last'])} ({_number(summary['median'])})"


def _row_line(row: dict) -> str:
    return (f"| {row['batch_size']} | {NAMES[row['adaptation']]} "
            f"| {row['reached']} / {row['counted']} | {_number(row['median_steps'])} "
            f"| {_number(row['median_examples'])} | {_speed(row['speedup_steps'])} "
            f"| {_speed(row['perfect_scaling'])} | {row['diverged']} | {_resolution(row)} "
            f"| {_noise(row['noise_scale']['classification'])} "
            f"| {_noise(row['noise_scale']['domain'])} |")


def _seed_line(row: dict, seed: dict) -> str:
    step = _number(seed["step"]) if seed["reached"] else (
        "not reached" if seed["counted"] else f"pending ({seed['status']})")
    accuracy = _number(seed["target_accuracy"], 4)
    if seed["status"] != "finished" and seed["target_accuracy"] is not None:
        accuracy += " (last evaluation)"
    why = seed["divergence"] or seed["failure"] or ""
    return (f"| {row['batch_size']} | {NAMES[row['adaptation']]} | {seed['seed']} "
            f"| {seed['status']} | {step} | {_number(seed['examples']) if seed['reached'] else '-'}"
            f" | {accuracy} | {'yes: ' + why if seed['diverged'] else why or 'no'} |")


def _target_sentence(content: dict) -> str:
    target = content["target_accuracy"]
    if content["fixed_before_study"]:
        return (f"**Target: target test accuracy >= {target:g}, fixed before the study** "
                f"(`{content['given_as']}`).")
    return (f"**Target: target test accuracy >= {target:g}** (`{content['given_as']}`). No "
            "--target_accuracy was given: fix the study's target in advance and pass it as "
            "--target_accuracy.")


def steps_to_target_lines(content: dict, plot_path: str = "") -> list[str]:
    """The "Steps to target" section of the scaling report."""
    lines = [
        f"## Steps to target accuracy {content['target_accuracy']:g} (the study's measure)", "",
        _target_sentence(content), "",
        "A seed's steps to target is its first evaluated step whose target test accuracy "
        "reaches the target (examples: step x B images per domain). A seed that misses it within"
        " its budget, or diverges or fails first, counts as not reaching it (MLPerf counts it as "
        "the slowest): +inf in the median. Unfinished seeds that have not reached it yet are "
        "pending and left out. Speed-up in steps: median steps at the smallest B over median "
        "steps at B; perfect scaling: B / B0. It uses target labels: reported, never used to "
        "choose.", "",
        NOISE_NOTE, "",
        "| B | method | reached / counted seeds | median steps | median examples "
        "| speed-up (steps) | perfect scaling | diverged | evaluated every / budget (steps) "
        "| B_simple classification | B_simple domain |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[_row_line(row) for row in content["rows"]], "",
        "| B | method | seed | status | first step at target | examples | final target accuracy "
        "| diverged |", "|---|---|---|---|---|---|---|---|",
        *[_seed_line(row, seed) for row in content["rows"] for seed in row["per_seed"]], "",
        f"![Steps to target against B, log-log, with the perfect-scaling line]({content['plot']})",
    ]
    if plot_path:
        lines += ["", f"The same figure: `{plot_path}`."]
    return lines


def _plot_method(ax, rows: list[dict], colour: str, top: float) -> None:
    """One method: each seed a dot (a miss a triangle on the top edge), the medians a line,
    and the perfect-scaling line through the smallest B's median."""
    name = NAMES[rows[0]["adaptation"]]
    hits = [(r["batch_size"], s["step"]) for r in rows for s in r["per_seed"] if s["reached"]]
    misses = [r["batch_size"] for r in rows for s in r["per_seed"]
              if s["counted"] and not s["reached"]]
    if hits:
        ax.scatter(*zip(*hits), s=18, color=colour, alpha=0.5, zorder=3,
                   label=f"{name}: a seed")
    if misses:
        ax.scatter(misses, [top] * len(misses), marker="^", s=60, facecolors="none",
                   edgecolors=colour, clip_on=False, zorder=4,
                   label=f"{name}: a seed that missed the target (top edge)")
    medians = [(r["batch_size"], r["median_steps"]) for r in rows
               if r["median_steps"] is not None and math.isfinite(r["median_steps"])]
    if medians:
        ax.plot(*zip(*medians), "-o", color=colour, lw=1.5, ms=6, zorder=2,
                label=f"{name}: median over seeds")
    reference = rows[0]["median_steps"]
    if reference is not None and math.isfinite(reference):
        sizes = [r["batch_size"] for r in rows]
        ax.plot(sizes, [reference * sizes[0] / b for b in sizes], ls="--", color=colour,
                lw=1.0, alpha=0.7, label=f"{name}: perfect scaling (slope -1 from B={sizes[0]})")
    noise = rows[0]["noise_scale"]["classification"]["last"]
    if noise is not None and noise > 0:
        ax.axvline(noise, ls=":", color=colour, lw=1.0,
                   label=f"{name}: B_simple, classification (at B={rows[0]['batch_size']})")


def _perfect_line(content: dict) -> list[float]:
    """The perfect-scaling line's values at every B of each method."""
    references = {(r["adaptation"], r["batch_size"]): r["median_steps"] for r in content["rows"]}
    values = []
    for row in content["rows"]:
        reference = references[(row["adaptation"], row["reference_batch"])]
        if reference is not None and math.isfinite(reference):
            values.append(reference * row["reference_batch"] / row["batch_size"])
    return values


def _limits(content: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """((left, right), (bottom, top)): every B and positive noise scale estimate drawn; the
    top edge, where misses go, above every seed, budget and line."""
    rows = content["rows"]
    sizes = [r["batch_size"] for r in rows]
    sizes += [r["noise_scale"]["classification"]["last"] for r in rows
              if (r["noise_scale"]["classification"]["last"] or 0) > 0]
    steps = [s["step"] for r in rows for s in r["per_seed"] if s["reached"]]
    steps = [v for v in steps + _perfect_line(content) if v > 0]
    budgets = [s["train_steps"] for r in rows for s in r["per_seed"]
               if isinstance(s["train_steps"], int)]
    bottom = min(steps) / 1.5 if steps else 1.0
    top = max(steps + budgets + [bottom * 10]) * 1.5
    return (min(sizes) / 1.6, max(sizes) * 1.6), (bottom, top)


def steps_plot_png(content: dict) -> bytes:
    """Steps to target against B, log-log, one colour per method: the seeds, the median
    and the perfect-scaling line (slope -1 through the smallest B's median)."""
    # matplotlib without pyplot: an Agg canvas of its own, no global backend or state.
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    xlim, (bottom, top) = _limits(content)
    sizes = sorted({r["batch_size"] for r in content["rows"]})
    for index, adaptation in enumerate(a for a in ORDER
                                       if any(r["adaptation"] == a for r in content["rows"])):
        _plot_method(ax, [r for r in content["rows"] if r["adaptation"] == adaptation],
                     f"C{index}", top)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if sizes:
        ax.set_xlim(*xlim)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(bottom, top)
    ax.set(xlabel="global batch B (images per domain per step)",
           ylabel=f"steps to target accuracy {content['target_accuracy']:g}",
           title=f"Steps to target {content['target_accuracy']:g} (fixed before the study)"
           if content["fixed_before_study"] else
           f"Steps to target {content['target_accuracy']:g}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=7)
    return figure_png(fig)
