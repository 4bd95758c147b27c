"""README's results table, written from the metrics files: never by hand.

    python -m kexue.report            # rewrite the table in README.md
    python -m kexue.report --check    # exit 1 when README.md differs from what it would write

Reads `metrics/<model>.json` (the evaluate stages: test figures, differences to baselines with
their paired bootstrap intervals), `metrics/validation/<model>.json` (the train stages: the
validation figures that chose) and `metrics/seeds.json` / `seeds_runs.json` (bench/seeds.py:
the same figures over several seeds). A difference is called better or worse only when its
interval excludes 0 and every seed's difference has the same sign; otherwise the table says
that no difference was measured.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from kexue import io, models, stats

BEGIN, END = "<!-- results -->", "<!-- /results -->"
COMPARISON = re.compile(r"^(?P<metric>.+)_vs_(?P<baseline>.+)$")


def _read(path: Path) -> dict:
    return io.read_json(path) if path.is_file() else {}


def comparisons(metrics: dict, headline: str) -> list[tuple[str, str]]:
    """(metric, baseline) of every `<metric>_vs_<baseline>` figure, the headline's first."""
    found = []
    for key in metrics:
        match = COMPARISON.match(key)
        if match and not key.endswith(("_low", "_high")) and f"{key}_low" in metrics:
            found.append((match["metric"], match["baseline"]))
    return sorted(found, key=lambda pair: (pair[0] != headline, pair))


def verdict(
    low: float, high: float, seed_differences: list[float], lower_is_better: bool = False
) -> str:
    """What may be said of one difference (model minus baseline): a claim needs the
    interval and the seeds; for an error, a negative difference is the better one."""
    sign = -1 if lower_is_better else 1
    interval = stats.verdict(*sorted((sign * low, sign * high)))
    seed_differences = [sign * d for d in seed_differences]
    if interval == "no difference":
        return "no difference measured"
    if len(seed_differences) < 2:
        return f"{interval} on this test set (interval); seeds not run"
    if all((d > 0) == (interval == "better") and d != 0 for d in seed_differences):
        return f"**{interval}** (interval and {len(seed_differences)} seeds agree)"
    return "no difference measured (the seeds disagree)"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4g}"


def _signed(value: float) -> str:
    return f"{value:+.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:+.3g}"


def _plain(value: float) -> str:
    return _signed(value).removeprefix("+")


def _items_cell(items: float | None, overlap: float | None) -> str:
    """How many test items, and how many of them training or validation also holds."""
    seen = "overlap not measured" if overlap is None else f"{overlap:.0f} seen in training"
    return f"{_number(items)} items, {seen}"


def _seeds_cell(summary: dict, key: str) -> str:
    row = summary.get(key)
    return "-" if row is None else f"{_plain(row['mean'])} ± {_plain(row['sd'])}"


def _chosen(validation: dict) -> str:
    """The epoch early stopping kept and its validation loss, from the train stage's
    validation figures; a training in phases gives each phase's (`<phase>_best_epoch`)."""
    if "best_epoch" in validation:
        said = f"epoch {validation['best_epoch']:.0f}"
        loss = validation.get("best_val_loss")
        return said if loss is None else f"{said} (val loss {loss:.4g})"
    phases = sorted(k.removesuffix("_best_epoch") for k in validation if k.endswith("_best_epoch"))
    if not phases:
        return "-"
    return "epochs " + ", ".join(f"{p} {validation[p + '_best_epoch']:.0f}" for p in phases)


def model_rows(root: Path, name: str) -> list[str]:
    metrics = _read(root / "metrics" / f"{name}.json")
    if not metrics:
        return [f"| {name} | not evaluated yet | | | | | |"]
    validation = _read(root / "metrics" / "validation" / f"{name}.json")
    seeds = _read(root / "metrics" / "seeds.json").get(name, {})
    runs = _read(root / "metrics" / "seeds_runs.json").get("runs", {}).get(name, {})
    headline = models.load(name).SCORE
    chosen = _chosen(validation)
    rows = []
    for metric, baseline in comparisons(metrics, headline):
        key = f"{metric}_vs_{baseline}"
        items = metrics.get(f"{metric}_items")
        differences = [run[key] for run in runs.values() if key in run]
        low, high = metrics[f"{key}_low"], metrics[f"{key}_high"]
        rows.append(
            "| "
            + " | ".join(
                [
                    name,
                    f"{metric} ({_items_cell(items, metrics.get('test_overlap'))})",
                    f"{_number(metrics.get(metric))} ({_seeds_cell(seeds, metric)})",
                    f"{baseline}: {_number(metrics.get(f'{metric}_{baseline}'))}",
                    f"{_signed(metrics[key])} [{_signed(low)}, {_signed(high)}] "
                    f"({_seeds_cell(seeds, key)})",
                    verdict(low, high, differences, stats.lower_is_better(metric)),
                    chosen if metric == headline else "",
                ]
            )
            + " |"
        )
    return rows


def table(root: Path) -> str:
    header = [
        "| model | test metric | model (mean ± sd over seeds) | baseline | model - baseline, "
        "95% paired bootstrap interval (over seeds) | verdict | chosen on validation |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [row for name in models.MODELS for row in model_rows(root, name)]
    return "\n".join(header + rows)


def rewrite(readme: str, body: str) -> str:
    """`readme` with the text between the results markers replaced by `body`."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md: expected the markers {BEGIN} and {END}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    parser.add_argument("--root", type=Path, default=Path("."), help="the project folder")
    args = parser.parse_args()
    readme_path = args.root / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    updated = rewrite(readme, table(args.root))
    if args.check:
        if updated != readme:
            sys.exit("README.md: the results table differs from `python -m kexue.report`")
        return
    io.write_text(readme_path, updated)


if __name__ == "__main__":
    main()
