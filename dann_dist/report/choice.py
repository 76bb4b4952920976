"""The label-free choice between a study's candidates, as results/plan.md fixes it before
the runs: a candidate is out if it did not finish (diverged, failed or still running) or
ended with source validation accuracy below a floor; of the rest, those whose source
validation is within `guard` of the best; of those, the lowest target entropy. Target
accuracy is never read.

  python -m dann_dist.report.choice --pilots=runs/study19/paper/pilots --batch_sizes=256,1024
  python -m dann_dist.report.choice --recipes_report=runs/study21/v1/report.json --guard=0.01

--pilots: <pilots>/<rule>/b<B>/dann/seed0/ are the pilot runs (scripts/study_scaling.sh);
one choice per B over the rules found. --recipes_report: the recipe table of
`report --recipes` (issue 21's ablation); one choice over its rows, on the means over
seeds. Prints a markdown table per choice; exit 0 with a choice, 1 without one (a
candidate unfinished, or none left), 2 on bad flags.
"""

from __future__ import annotations

import math
import os
import sys

from dann_dist import cli, rundir

# results/plan.md: issue 12's criterion for the scaling rules (2 points), a floor that
# marks a collapsed run; issue 21 passes --guard=0.01.
DEFAULT_GUARD = 0.02
DEFAULT_FLOOR = 0.9


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def choose(candidates: dict, guard: float = DEFAULT_GUARD, floor: float = DEFAULT_FLOOR) -> dict:
    """candidates: name -> {"status": "finished" or why not, "source_val_accuracy",
    "target_entropy"}. Returns {"chosen": name or None, "reason", "rows": name -> verdict}."""
    rows = {}
    for name, c in candidates.items():
        val, entropy = c.get("source_val_accuracy"), c.get("target_entropy")
        if c.get("status") != "finished":
            verdict = f"out: {c.get('status') or 'not finished'}"
        elif not (_finite(val) and _finite(entropy)):
            verdict = "out: no finite source validation or target entropy"
        elif val < floor:
            verdict = f"out: source validation {val:.4f} below {floor}"
        else:
            verdict = "in"
        rows[name] = {**c, "verdict": verdict}
    unfinished = [n for n, c in candidates.items()
                  if c.get("status") in ("incomplete", "missing", None)]
    if unfinished:
        return {"chosen": None, "rows": rows,
                "reason": f"not all candidates finished ({', '.join(unfinished)}): no choice yet"}
    alive = {n: r for n, r in rows.items() if r["verdict"] == "in"}
    if not alive:
        return {"chosen": None, "rows": rows, "reason": "every candidate is out"}
    best = max(r["source_val_accuracy"] for r in alive.values())
    for name, row in alive.items():
        if row["source_val_accuracy"] < best - guard:
            row["verdict"] = f"out: source validation more than {guard} below the best {best:.4f}"
    guarded = {n: r for n, r in alive.items() if r["verdict"] == "in"}
    chosen = min(guarded, key=lambda n: guarded[n]["target_entropy"])
    rows[chosen]["verdict"] = "chosen"
    return {"chosen": chosen, "rows": rows,
            "reason": f"lowest target entropy within {guard} of the best source validation "
                      f"({best:.4f})"}


def pilot_candidates(pilots_dir: str, batch_size: int) -> dict:
    """rule -> candidate, from <pilots_dir>/<rule>/b<B>/dann/seed0 (the run's files)."""
    from dann_dist.report import steps_to_target

    out = {}
    for rule in sorted(os.listdir(pilots_dir)):
        if not os.path.isdir(os.path.join(pilots_dir, rule)):
            continue
        model_dir = os.path.join(pilots_dir, rule, f"b{batch_size}", "dann", "seed0")
        run = {"seed": 0, "model_dir": model_dir, "result": None}
        entry = steps_to_target.seed_entry(run, target=2.0)   # 2.0: never reached
        metrics = rundir.read_json(rundir.path(model_dir, rundir.METRICS)) or {}
        record = rundir.read_json(rundir.path(model_dir, rundir.RUN_RECORD)) or {}
        status = entry["status"]
        if metrics and metrics.get("step") == (record.get("config") or {}).get("train_steps"):
            status = "finished"   # seed_entry reads final metrics only from a collected run
        elif status == "diverged":
            status = f"diverged ({entry['divergence']})"
        elif status == "failed":
            status = f"failed ({entry['failure']})"
        out[rule] = {"status": status,
                     "source_val_accuracy": metrics.get("source_val_accuracy"),
                     "target_entropy": metrics.get("target_entropy")}
    return out


def recipe_candidates(report_json: str, seeds: int = 3) -> dict:
    """recipe -> candidate, on the means over seeds of `report --recipes`'s rows; a recipe
    with fewer than `seeds` finished seeds is unfinished (no choice on part of its seeds)."""
    table = (rundir.read_json(report_json) or {}).get("recipes")
    if not table:
        raise FileNotFoundError(f"{report_json}: no recipe table (report --recipes writes it)")
    out = {}
    for row in table["rows"]:
        out[row["recipe"]] = {
            "status": "finished" if len(row["seeds"]) >= seeds else "incomplete",
            "seeds": len(row["seeds"]),
            "source_val_accuracy": row["final_source_val_accuracy"]["mean"],
            "target_entropy": row["final_target_entropy"]["mean"]}
    for name in table.get("without_runs", []):
        out[name] = {"status": "missing"}
    return out


def markdown(title: str, result: dict) -> str:
    def cell(value, digits):
        return f"{value:.{digits}f}" if _finite(value) else "-"

    lines = [f"### {title}", "", "| candidate | source validation | target entropy | verdict |",
             "|---|---|---|---|"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {cell(row.get('source_val_accuracy'), 4)} "
                     f"| {cell(row.get('target_entropy'), 3)} | {row['verdict']} |")
    lines += ["", f"Chosen: **{result['chosen'] or 'none'}** ({result['reason']}).", ""]
    return "\n".join(lines)


def main(argv) -> None:
    from absl import flags

    options = flags.FLAGS
    if argv[1:]:
        cli.fail(f"unexpected arguments {argv[1:]}", cli.EXIT_USAGE)
    if not options["pilots"].present and not options["recipes_report"].present:
        cli.fail("give --pilots=DIR (with --batch_sizes) or --recipes_report=FILE.",
                 cli.EXIT_USAGE)
    chosen_all = True
    try:
        if options.pilots:
            for batch_size in options.batch_sizes:
                result = choose(pilot_candidates(options.pilots, int(batch_size)),
                                options.guard, options.floor)
                print(markdown(f"B = {batch_size}, pilots in {options.pilots}", result))
                chosen_all &= result["chosen"] is not None
        if options.recipes_report:
            result = choose(recipe_candidates(options.recipes_report, options.seeds),
                            options.guard, options.floor)
            print(markdown(f"recipes of {options.recipes_report}", result))
            chosen_all &= result["chosen"] is not None
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        cli.fail(str(err), cli.EXIT_USAGE)
    sys.exit(0 if chosen_all else cli.EXIT_ERROR)


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("pilots", "", "Directory of pilots: <pilots>/<rule>/b<B>/dann/seed0/.")
    flags.DEFINE_list("batch_sizes", ["256", "1024"], "With --pilots: one choice per B.")
    flags.DEFINE_string("recipes_report", "", "report.json of `report --recipes`.")
    flags.DEFINE_integer("seeds", 3, "With --recipes_report: finished seeds a recipe needs "
                         "before it can be chosen.", lower_bound=1)
    flags.DEFINE_float("guard", DEFAULT_GUARD, "How far below the best source validation "
                       "accuracy a candidate may be and stay in.", lower_bound=0.0)
    flags.DEFINE_float("floor", DEFAULT_FLOOR, "Source validation accuracy below which a "
                       "candidate is out (collapsed).", lower_bound=0.0, upper_bound=1.0)


def run() -> None:
    from absl import app

    define_flags()
    app.run(main, flags_parser=lambda argv: cli.parse_flags_or_exit(
        argv, doc=sys.modules[__name__].__doc__))


if __name__ == "__main__":
    run()
