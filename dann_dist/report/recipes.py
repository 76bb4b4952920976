"""The recipe table: one ordinary report directory per named recipe (a trainer flagfile),
`<report_dir>/<name>/<adaptation>/seed<S>/`, and one row per (recipe, adaptation): target
and source accuracy over seeds, the label-free criteria (final source validation accuracy,
final target entropy, proxy A-distance) and the cost (wall time, images/s, and the ratio of
wall time to the first recipe's). Target labels give the accuracy columns only; choices
between recipes are made on the label-free columns."""

from __future__ import annotations

import dataclasses
import os
import re

from absl import logging

from dann_dist import cli
from dann_dist.report.build import report_and_runs, write_summary
from dann_dist.report.markdown import fmt
from dann_dist.report.options import (
    NAMES,
    ORDER,
    NoFinishedRunError,
    ReportError,
    ReportOptions,
)
from dann_dist.report.tables import finished, shared, summarise

# The strong recipe's additions (config fields), shown per row so the table says what differs.
ADDITION_KEYS = ("input_norm", "extractor_bn", "extractor_width", "source_augment",
                 "target_entropy_weight", "train_steps")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def parse_recipes(values: list[str]) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """["paper=configs/a.cfg", "d=configs/b.cfg@dirtt", ...] ->
    (("paper", "configs/a.cfg", ()), ("d", "configs/b.cfg", ("dirtt",)), ...): a recipe
    trains the --adaptations rows, or the one method named after @ (a recipe such as
    DIRT-T's is a method and its flagfile together; the report sets --adaptation itself)."""
    out = []
    for value in values:
        name, sep, spec = value.partition("=")
        flagfile, at, method = spec.partition("@")
        if not sep or not _NAME.match(name) or not flagfile or (at and not method):
            raise ReportError(f"--recipes: {value!r} is not NAME=FLAGFILE or "
                              "NAME=FLAGFILE@METHOD (NAME of letters, digits and _.+-), e.g. "
                              "paper=configs/mnist_mnistm.cfg or "
                              "dirtt=configs/mnist_mnistm_dirtt.cfg@dirtt.", cli.EXIT_USAGE)
        if at and method not in ORDER:
            raise ReportError(f"--recipes: {value!r}: {method!r} is not a method; choose "
                              f"among {', '.join(ORDER)}.", cli.EXIT_USAGE)
        out.append((name, flagfile, (method,) if at else ()))
    names = [name for name, _, _ in out]
    if len(set(names)) != len(names):
        raise ReportError(f"--recipes: the names {names} repeat; each names a directory.",
                          cli.EXIT_USAGE)
    return tuple(out)


def options_for_recipe(options: ReportOptions, name: str, flagfile: str,
                       methods: tuple[str, ...] = ()) -> ReportOptions:
    """The ordinary report of one recipe: its own directory, trainer flagfile and rows."""
    return dataclasses.replace(options, report_dir=os.path.join(options.report_dir, name),
                               train_flagfile=flagfile, recipes=(),
                               adaptations=methods or options.adaptations)


def _recipe_report(options: ReportOptions, name: str, flagfile: str, methods, domains):
    try:
        return report_and_runs(options_for_recipe(options, name, flagfile, methods),
                               domains=domains)
    except NoFinishedRunError:
        if not options.collect_only:
            raise
        logging.warning("no finished run for recipe %s under %s", name,
                        os.path.join(options.report_dir, name))
        return None


def recipe_row(name: str, flagfile: str, adaptation: str, results: list[dict],
               pad: dict | None) -> dict:
    finals = [r["result"]["metrics"] for r in results]
    last = [r["result"]["selected"]["final"] for r in results]
    configs = [r["result"]["config"] for r in results]
    return {
        "recipe": name, "flagfile": flagfile, "adaptation": adaptation,
        "seeds": [r["seed"] for r in results],
        "target_accuracy": summarise([m["target_accuracy"] for m in finals]),
        "source_accuracy": summarise([m["source_accuracy"] for m in finals]),
        "final_source_val_accuracy": summarise([e.get("source_val_accuracy") for e in last]),
        "final_target_entropy": summarise([e.get("target_entropy") for e in last]),
        "proxy_a_distance": pad,
        "train_seconds": summarise([m.get("train_seconds") for m in finals]),
        "examples_per_sec": summarise([m.get("examples_per_sec") for m in finals]),
        "additions": {k: shared([c.get(k) for c in configs]) for k in ADDITION_KEYS},
    }


def _with_cost_ratio(rows: list[dict]) -> list[dict]:
    """Each row's mean wall time over the first recipe's row of the same method; a method
    the first recipe does not train (a NAME=FLAGFILE@METHOD recipe) is compared with the
    first recipe's DANN row (its first row if it has none)."""
    first = [r for r in rows if r["recipe"] == rows[0]["recipe"]]
    base_rows = {r["adaptation"]: r for r in reversed(first)}
    fallback = base_rows.get("dann", first[0])
    for row in rows:
        seconds = row["train_seconds"]["mean"]
        base = base_rows.get(row["adaptation"], fallback)["train_seconds"]["mean"]
        row["time_ratio"] = seconds / base if seconds and base else None
    return rows


def recipes_table(options: ReportOptions, domains=None) -> dict:
    rows, without_runs, data = [], [], None
    for name, flagfile, methods in options.recipes:
        made = _recipe_report(options, name, flagfile, methods, domains)
        if made is None:
            without_runs.append(name)
            continue
        report, runs = made
        data = data or report["data"]
        pads = (report.get("proxy_a_distance") or {}).get("by_adaptation", {})
        for adaptation in ORDER:
            results = finished(runs, adaptation)
            if results:
                pad = pads.get(adaptation)
                rows.append(recipe_row(name, flagfile, adaptation, results,
                                       summarise(pad["values"]) if pad else None))
    if not rows:
        raise ReportError(f"no finished run under {options.report_dir}/<recipe> for --recipes: "
                          "run without --collect_only to train them.", cli.EXIT_USAGE)
    return {"recipes": [{"name": n, "flagfile": f, "methods": list(m)}
                        for n, f, m in options.recipes],
            "rows": _with_cost_ratio(rows), "data": data, "without_runs": without_runs}


def _cell(summary: dict | None, digits: int = 4) -> str:
    return fmt(summary, digits) if summary else "-"


def _additions(row: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in row["additions"].items())


def _spec(recipe: dict) -> str:
    methods = recipe.get("methods") or []
    return f"{recipe['name']}={recipe['flagfile']}" + "".join(f"@{m}" for m in methods)


def recipes_markdown(recipes: dict, generated: str) -> str:
    data = recipes["data"] or {}
    lines = [
        "# Recipes: accuracy, label-free criteria and cost",
        "",
        "Generated by `python -m dann_dist.report --recipes="
        f"{','.join(_spec(r) for r in recipes['recipes'])}` on "
        f"{generated}. Runs of a recipe: `<name>/<adaptation>/seed<k>/` (each an ordinary "
        "report directory).",
        "",
        f"- **Data.** Source: {data.get('source', '?')}. Target: {data.get('target', '?')}.",
        "- Mean ± sample standard deviation over seeds, final model. Target accuracy uses "
        "target labels and is **not used for any choice**; choose on the label-free columns "
        "(source validation accuracy: higher is better; target entropy and proxy A-distance: "
        "lower is better, but a recipe that minimises target entropy lowers it by design).",
        "",
        "| recipe | method | seeds | target accuracy | source accuracy | source validation "
        "| target entropy | proxy A-distance | wall time (s) | time vs first | images/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in recipes["rows"]:
        ratio = f"{row['time_ratio']:.2f}x" if row["time_ratio"] else "-"
        lines.append(
            f"| {row['recipe']} | {NAMES[row['adaptation']]} | {len(row['seeds'])} "
            f"| {_cell(row['target_accuracy'])} | {_cell(row['source_accuracy'])} "
            f"| {_cell(row['final_source_val_accuracy'])} "
            f"| {_cell(row['final_target_entropy'], 3)} | {_cell(row['proxy_a_distance'], 3)} "
            f"| {_cell(row['train_seconds'], 0)} | {ratio} "
            f"| {_cell(row['examples_per_sec'], 0)} |")
    lines += ["", "What each recipe's runs recorded (run.json):", ""]
    seen = set()
    for row in recipes["rows"]:
        if row["recipe"] not in seen:
            seen.add(row["recipe"])
            lines.append(f"- {row['recipe']} (`{row['flagfile']}`): {_additions(row)}")
    if recipes["without_runs"]:
        lines += ["", f"No finished run for {', '.join(recipes['without_runs'])} "
                  "(--collect_only does not train): rerun without it to train them."]
    return "\n".join(lines) + "\n"


def make_recipes_report(options: ReportOptions, domains=None) -> dict:
    """Reports every recipe in its own directory, then writes the recipe table to
    <report_dir>/report.json (key "recipes") and <report_dir>/report.md."""
    for _, flagfile, _ in options.recipes:
        if not options.collect_only and not os.path.isfile(flagfile):
            raise ReportError(f"--recipes: {flagfile}: no such file (paths are relative to "
                              f"{os.getcwd()}).", cli.EXIT_USAGE)
    os.makedirs(options.report_dir, exist_ok=True)
    return write_summary(options.report_dir, "recipes", recipes_table(options, domains),
                         recipes_markdown)
