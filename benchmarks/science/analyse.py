"""Statistics, figures and the written verdict of the seeded study (run by study.py).

Inputs: ``work/<dataset>/runs/*.json`` (one per scenario x method x seed). Outputs in
``benchmarks/results/science/``: ``runs.csv`` (every run), ``summary.csv`` (mean and standard
deviation per cell), ``paired.csv`` (method minus baseline, per scenario, with a 95 % t-interval
over seeds), ``science.json`` (all of it plus selection and verdict), ``report.md`` and figures
``<dataset>_fig2_accuracy.png`` ... like the paper's Fig. 2-5, with error bars (one standard
deviation over seeds), and ``<dataset>_paired_g_mean.png`` (the paired differences with their CIs).

All figures are on the test split; selection reads the validation split only, through the
pipeline's own ``aider_edge.selection.rank_candidates``.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from aider_edge import atomic
from aider_edge.config import load_params
from aider_edge.selection import rank_candidates

HERE = Path(__file__).resolve().parent
METRICS = ("accuracy", "g_mean", "macro_f1", "f1_variance", "balanced_accuracy", "mcc")
PAIRED = ("g_mean", "f1_variance", "accuracy", "macro_f1")
LABELS = {
    "accuracy": "accuracy",
    "g_mean": "G-Mean",
    "macro_f1": "macro-F1",
    "f1_variance": "F1 variance",
    "balanced_accuracy": "balanced accuracy",
    "mcc": "MCC",
}
DATASET_NAMES = {
    "fashion": "Fashion-MNIST (shirt, pullover, coat, dress | t-shirt/top)",
    "synthetic": "synthetic AIDER-like",
}


def load_runs(work: Path, dataset: str, seeds: int) -> list[dict]:
    """The finished runs of the first ``seeds`` seeds (runs of a larger study are left out)."""
    runs = []
    for path in sorted((work / dataset / "runs").glob("*.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        if run["seed_index"] < seeds:
            runs.append(run)
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
    return float(arr.mean()), std


def t_interval(diffs: list[float]) -> dict:
    """Mean of paired differences with a two-sided 95 % t-interval (n - 1 degrees of freedom)."""
    arr = np.asarray(diffs, dtype=float)
    n = len(arr)
    mean = float(arr.mean())
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def summarise(runs: list[dict], classes: list[str]) -> dict:
    """{(scenario, method): {metric: (mean, std), "f1_per_class": {c: (mean, std)}, "n": n}}."""
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        cells[run["scenario"], run["method"]].append(run)
    out = {}
    for key, group in cells.items():
        entry = {"n": len(group)}
        for metric in METRICS:
            entry[metric] = mean_std([r["test"][metric] for r in group])
        entry["val_g_mean"] = mean_std([r["val"]["g_mean"] for r in group])
        entry["f1_per_class"] = {
            c: mean_std([r["test"]["f1_per_class"][c] for r in group]) for c in classes
        }
        entry["train_seconds"] = mean_std([r["train_seconds"] for r in group])
        out[key] = entry
    return out


def paired_differences(runs: list[dict], methods: list[str], reference: str = "baseline") -> dict:
    """{(scenario, method): {metric: t_interval of (method - reference) over shared seeds}}."""
    by = {(r["scenario"], r["method"], r["seed_index"]): r for r in runs}
    out = {}
    for scenario in sorted({r["scenario"] for r in runs}):
        for method in methods:
            if method == reference:
                continue
            seeds = sorted(
                k for (s, m, k) in by if s == scenario and m == method and (s, reference, k) in by
            )
            if not seeds:
                continue
            out[scenario, method] = {
                metric: t_interval(
                    [
                        by[scenario, method, k]["test"][metric]
                        - by[scenario, reference, k]["test"][metric]
                        for k in seeds
                    ]
                )
                for metric in PAIRED
            }
    return out


def selections(runs: list[dict], methods: list[str]) -> dict:
    """Per scenario: the method ``rank_candidates`` picks for every seed (validation only), and
    the picked run's test G-Mean minus the baseline's (what the pipeline would ship)."""
    by_cell: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in runs:
        by_cell[r["scenario"], r["seed_index"]].append(r)
    out: dict[str, dict] = {}
    for scenario in sorted({s for s, _ in by_cell}):
        picks, gains, picked_g = [], [], []
        for (s, _k), group in sorted(by_cell.items()):
            if s != scenario or {r["method"] for r in group} != set(methods):
                continue  # a seed with a missing method would not be a fair choice
            ranked = rank_candidates(
                [
                    {
                        "scenario": r["scenario"],
                        "method": r["method"],
                        "val_g_mean": r["val"]["g_mean"],
                        "val_f1_variance": r["val"]["f1_variance"],
                        "val_accuracy": r["val"]["accuracy"],
                    }
                    for r in group
                ]
            )
            best = next(r for r in group if r["method"] == ranked[0]["method"])
            base = next(r for r in group if r["method"] == "baseline")
            picks.append(best["method"])
            picked_g.append(best["test"]["g_mean"])
            gains.append(best["test"]["g_mean"] - base["test"]["g_mean"])
        if picks:
            out[scenario] = {
                "picks": picks,
                "most_picked": Counter(picks).most_common(1)[0][0],
                "picked_test_g_mean": mean_std(picked_g),
                "gain_over_baseline": t_interval(gains),
            }
    return out


def verdict_word(ci: dict, better: str) -> str:
    """``holds`` when the 95 % CI excludes 0 in the paper's direction, ``reversed`` when it
    excludes 0 the other way, ``not resolved`` otherwise (the seeds cannot tell)."""
    low, high = ci["ci_low"], ci["ci_high"]
    if low is None:
        return "n/a"
    if better == "higher":
        return "holds" if low > 0 else "reversed" if high < 0 else "not resolved"
    return "holds" if high < 0 else "reversed" if low > 0 else "not resolved"


def accuracy_word(ci: dict) -> str:
    """The paper claims accuracy is *kept*: not significantly lower than the baseline's."""
    if ci["ci_low"] is None:
        return "n/a"
    return "lost" if ci["ci_high"] < 0 else "kept"


def fmt(ms: tuple[float, float], digits: int = 3) -> str:
    mean, std = ms
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def fmt_ci(ci: dict, digits: int = 3) -> str:
    if ci["ci_low"] is None:
        return f"{ci['mean']:+.{digits}f}"
    return f"{ci['mean']:+.{digits}f} [{ci['ci_low']:+.{digits}f}, {ci['ci_high']:+.{digits}f}]"


# --- figures --------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def bars_figure(summary, scenarios, methods, metric, title) -> Figure:
    fig = _figure(11, 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(scenarios))
    for i, method in enumerate(methods):
        cells = [summary.get((s, method)) for s in scenarios]
        means = [c[metric][0] if c else np.nan for c in cells]
        stds = [c[metric][1] if c else np.nan for c in cells]
        _grouped_bars(ax, x, i, len(methods), means, stds, method, capsize=2)
    ax.set_xticks(x, scenarios)
    ax.set_xlabel("scenario (s1 most imbalanced, s5 balanced)")
    ax.set_ylabel(f"test {LABELS[metric]}")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=4, fontsize=8)
    return fig


def _grouped_bars(ax, x, index: int, count: int, means, stds, label: str, capsize: float) -> None:
    """Bar ``index`` of ``count`` side by side at each ``x``, with a standard-deviation whisker."""
    width = 0.8 / count
    offset = (index - (count - 1) / 2) * width
    ax.bar(x + offset, means, width, yerr=stds, capsize=capsize, label=label)


def per_class_figure(summary, scenarios, methods, classes, title) -> Figure:
    fig = _figure(12, 2.4 * len(scenarios))
    x = np.arange(len(classes))
    for row, scenario in enumerate(scenarios):
        ax = fig.add_subplot(len(scenarios), 1, row + 1)
        for i, method in enumerate(methods):
            cell = summary.get((scenario, method))
            if cell is None:
                continue
            means = [cell["f1_per_class"][c][0] for c in classes]
            stds = [cell["f1_per_class"][c][1] for c in classes]
            _grouped_bars(ax, x, i, len(methods), means, stds, method, capsize=1.5)
        ax.set_xticks(x, [c.replace("_", " ") for c in classes])
        ax.set_ylabel(f"{scenario}: F1")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        if row == 0:
            ax.set_title(title)
            ax.legend(ncols=7, fontsize=7)
    return fig


def paired_figure(paired, scenarios, methods, metric, title) -> Figure:
    others = [m for m in methods if m != "baseline"]
    fig = _figure(11, 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(others)
    for i, method in enumerate(others):
        for j, scenario in enumerate(scenarios):
            ci = paired.get((scenario, method), {}).get(metric)
            if ci is None or ci["ci_low"] is None:
                continue
            xpos = j + (i - (len(others) - 1) / 2) * width
            ax.errorbar(
                xpos,
                ci["mean"],
                yerr=[[ci["mean"] - ci["ci_low"]], [ci["ci_high"] - ci["mean"]]],
                fmt="o",
                color=f"C{i + 1}",
                capsize=2,
                label=method if j == 0 else None,
            )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(scenarios)), scenarios)
    ax.set_ylabel(f"{LABELS[metric]}: method - baseline (95 % CI)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(ncols=3, fontsize=8)
    return fig


# --- report ---------------------------------------------------------------------------------


def dataset_section(name, params, runs, summary, paired, picked, scenarios, methods) -> list[str]:
    classes = params.data.classes
    seeds = sorted({r["seed_index"] for r in runs})
    seconds = [r["train_seconds"] for r in runs]
    lines = [
        f"## {DATASET_NAMES.get(name, name)}",
        "",
        f"{len(runs)} runs: {len(scenarios)} scenarios x {len(methods)} methods x {len(seeds)} "
        f"seeds; {params.data.image_size} px, {params.split.train_size} training images per "
        f"scenario, {params.train.epochs} epochs, batch {params.train.batch_size}, test split "
        f"{params.split.test_per_class} per class, val {params.split.val_per_class} per class; "
        f"{np.mean(seconds):.0f} s of wall time per run on the busy shared machine "
        f"({sum(seconds) / 60:.0f} min summed over runs). "
        f"Classes: {', '.join(classes)} (the last is the majority).",
        "",
    ]
    for metric in ("accuracy", "g_mean", "macro_f1", "f1_variance"):
        lines += [
            f"Test {LABELS[metric]} (mean ± sd over seeds):",
            "",
            "| method | " + " | ".join(scenarios) + " |",
            "|---|" + "---|" * len(scenarios),
        ]
        for method in methods:
            cells = [summary.get((s, method)) for s in scenarios]
            row = [fmt(c[metric]) if c else "—" for c in cells]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "Paired difference to `baseline` on the same seed, mean [95 % t-interval]; G-Mean "
        "(higher is better) / F1 variance (lower is better) / accuracy:",
        "",
        "| method | scenario | Δ G-Mean | Δ F1 variance | Δ accuracy |",
        "|---|---|---|---|---|",
    ]
    for method in methods:
        for s in scenarios:
            p = paired.get((s, method))
            if p:
                lines.append(
                    f"| {method} | {s} | {fmt_ci(p['g_mean'])} | {fmt_ci(p['f1_variance'], 4)} | "
                    f"{fmt_ci(p['accuracy'])} |"
                )
    lines += [
        "",
        "Selection (`aider_edge.selection.rank_candidates` on the validation split, per seed) and "
        "the test G-Mean of what it picks, minus the baseline's:",
        "",
        "| scenario | picks per seed | picked test G-Mean | gain over baseline [95 % CI] |",
        "|---|---|---|---|",
    ]
    for s in scenarios:
        sel = picked.get(s)
        if sel:
            lines.append(
                f"| {s} | {', '.join(sel['picks'])} | {fmt(sel['picked_test_g_mean'])} | "
                f"{fmt_ci(sel['gain_over_baseline'])} |"
            )
    lines.append("")
    for fig in ("fig2_accuracy", "fig3_g_mean", "fig4_f1_variance", "fig5_per_class_f1"):
        lines.append(f"![{name} {fig}]({name}_{fig}.png)")
    lines += [f"![{name} paired G-Mean]({name}_paired_g_mean.png)", ""]
    return lines


def _per_scenario(paired, method, metric, scenarios, word) -> tuple[str, Counter]:
    digits = 4 if metric == "f1_variance" else 3
    parts, counts = [], Counter()
    for s in scenarios:
        p = paired.get((s, method))
        if p is None:
            continue
        w = word(p[metric])
        counts[w] += 1
        parts.append(f"{s} {fmt_ci(p[metric], digits)} ({w})")
    return "; ".join(parts), counts


def _higher(ci: dict) -> str:
    return verdict_word(ci, "higher")


def _lower(ci: dict) -> str:
    return verdict_word(ci, "lower")


def verdict(name, paired, ablations, summary, picked, scenarios, methods) -> tuple[list, dict]:
    """The paper's three claims for `adaptive` vs `baseline` in the imbalanced scenarios, the
    ablations (adaptive vs wce: does SupCon add anything to the class weights; adaptive vs
    supcon_fixed: does adapting tau and lambda matter), the balanced control, and the best
    methods, in words with the numbers."""
    imbalanced = [s for s in scenarios if s != "s5"]
    lines = [f"**{DATASET_NAMES.get(name, name)}** (adaptive - baseline, test split, s1-s4):"]
    data: dict = {}
    for metric, text, word in (
        ("g_mean", "Higher G-Mean", _higher),
        ("f1_variance", "Lower F1 variance", _lower),
        ("accuracy", "Accuracy kept", accuracy_word),
        (
            "macro_f1",
            "Higher macro-F1 (not a claim of the paper; less all-or-nothing than G-Mean)",
            _higher,
        ),
    ):
        detail, counts = _per_scenario(paired, "adaptive", metric, imbalanced, word)
        data[metric] = dict(counts)
        summary_words = ", ".join(f"{w} in {n}" for w, n in counts.most_common())
        lines.append(f"- {text}: {summary_words or 'no data'}. {detail}.")
    for ref, question in (
        ("wce", "adaptive - wce (does SupCon add to the class weights?)"),
        ("supcon_fixed", "adaptive - supcon_fixed (does adapting tau and lambda matter?)"),
    ):
        detail, counts = _per_scenario(ablations[ref], "adaptive", "g_mean", imbalanced, _higher)
        data[f"vs_{ref}"] = dict(counts)
        lines.append(f"- G-Mean, {question}: {detail}.")
    if "s5" in scenarios:
        detail, _ = _per_scenario(paired, "adaptive", "g_mean", ["s5"], _higher)
        lines.append(f"- Balanced control s5, G-Mean adaptive - baseline: {detail}.")
    best = {}
    for s in scenarios:
        cells = {m: summary[s, m]["g_mean"][0] for m in methods if (s, m) in summary}
        if cells:
            best[s] = max(cells, key=cells.get)
    lines.append(
        "- Highest mean test G-Mean: "
        + ", ".join(f"{s} {best[s]} ({summary[s, best[s]]['g_mean'][0]:.3f})" for s in best)
        + "."
    )
    lines.append(
        "- Selection (validation G-Mean) picks, most frequent over seeds: "
        + ", ".join(f"{s} {picked[s]['most_picked']}" for s in scenarios if s in picked)
        + "."
    )
    check = identity_check(paired, ablations)
    if check:
        lines.append(f"- Consistency check at s5 (sigma 0): {check}.")
    ldam = paired.get(("s1", "ldam_drw"))
    if ldam and ldam["g_mean"]["mean"] <= 0:
        lines.append(
            "- LDAM-DRW is re-weighted only from `loss.ldam_drw.drw_epoch` (the last epoch here, as Cao et "
            "al. re-weight the last 20 %); in this short schedule that is too late to rescue the "
            "minorities in s1."
        )
    data["best_by_test_g_mean"] = best
    return lines, data


def identity_check(paired: dict, ablations: dict) -> str:
    """At sigma 0 the formulas make wce = baseline and adaptive = supcon_fixed; deterministic
    training must then give identical runs (a check of the whole pipeline's seeding)."""
    parts = []
    wce = paired.get(("s5", "wce"))
    if wce:
        same = all(wce[m]["sd"] == 0 and wce[m]["mean"] == 0 for m in PAIRED)
        parts.append(f"wce {'equals' if same else 'DIFFERS from'} baseline run for run")
    fixed = ablations["supcon_fixed"].get(("s5", "adaptive"))
    if fixed:
        same = all(fixed[m]["sd"] == 0 and fixed[m]["mean"] == 0 for m in PAIRED)
        parts.append(f"adaptive {'equals' if same else 'DIFFERS from'} supcon_fixed run for run")
    return ", ".join(parts)


def main(work: Path, results: Path, datasets: list[str], seeds: int) -> None:
    results.mkdir(parents=True, exist_ok=True)
    report = [
        "# Does it hold on real data? The seeded study",
        "",
        "Generated by `make bench-science` (`benchmarks/science/study.py`); do not edit by hand.",
        "Every number is on the test split unless it says validation; ± is one standard "
        "deviation over seeds; intervals are two-sided 95 % t-intervals of the paired difference "
        "to `baseline` over seeds (same split, same seed). A claim *holds* in a scenario when "
        "the interval excludes 0 in the paper's direction, is *reversed* when it excludes 0 the "
        "other way, and is *not resolved* otherwise; accuracy is *kept* unless its interval lies "
        "below 0.",
        "",
        "Setup: the project's own stages (ingest, split, pixel cache, `training.train`, metrics); "
        "the split is cut once per dataset and the seeds vary initial heads, batch order, "
        "augmentation and dropout. MobileNetV3-Large starts from a backbone pre-trained on the "
        "five Fashion-MNIST classes the study does not use (`pretrain.py`; the paper uses ImageNet "
        "weights, which cannot be downloaded here). The budget is sized for a shared 2-core CPU "
        "(see each dataset's line), far below the paper's 224 px / 1,500 images / 30 epochs, so "
        "absolute scores are low. G-Mean is 0 whenever one class is never recognised "
        "(imbalanced-learn's default), so at this budget a G-Mean gain mostly means "
        "'now predicts every class at all'; macro-F1 is reported as the graded view.",
        "",
    ]
    intro = len(report)
    verdict_lines: list[str] = []
    everything: dict = {}
    run_rows, summary_rows, paired_rows = [], [], []
    for name in datasets:
        params = load_params(HERE / f"params_{name}.yaml")
        runs = load_runs(work, name, seeds)
        if not runs:
            print(f"[{name}] no finished runs; skipped in the report")
            continue
        methods = [m for m in params.train.methods if any(r["method"] == m for r in runs)]
        scenarios = [s for s in params.trained_scenarios if any(r["scenario"] == s for r in runs)]
        classes = params.data.classes
        summary = summarise(runs, classes)
        paired = paired_differences(runs, methods)
        ablations = {r: paired_differences(runs, ["adaptive"], r) for r in ("wce", "supcon_fixed")}
        picked = selections(runs, methods)
        for r in runs:
            run_rows.append(
                [name, r["scenario"], r["method"], r["seed"], r["best_epoch"], r["train_seconds"]]
                + [round(r["test"][m], 5) for m in METRICS]
                + [round(r["val"]["g_mean"], 5)]
                + [round(r["test"]["f1_per_class"][c], 5) for c in classes]
            )
        for (s, m), e in sorted(summary.items()):
            summary_rows.append(
                [name, s, m, e["n"]]
                + [round(v, 5) for metric in METRICS for v in e[metric]]
                + [round(v, 5) for c in classes for v in e["f1_per_class"][c]]
            )
        for (s, m), p in sorted(paired.items()):
            for metric, ci in p.items():
                paired_rows.append(
                    [name, s, m, metric, ci["n"]]
                    + [
                        None if ci[k] is None else round(ci[k], 5)
                        for k in ("mean", "sd", "ci_low", "ci_high")
                    ]
                )
        title = DATASET_NAMES.get(name, name)
        figs = {
            "fig2_accuracy": bars_figure(summary, scenarios, methods, "accuracy", title),
            "fig3_g_mean": bars_figure(summary, scenarios, methods, "g_mean", title),
            "fig4_f1_variance": bars_figure(summary, scenarios, methods, "f1_variance", title),
            "fig5_per_class_f1": per_class_figure(summary, scenarios, methods, classes, title),
            "paired_g_mean": paired_figure(paired, scenarios, methods, "g_mean", title),
        }
        for fig_name, fig in figs.items():
            _save(fig, results / f"{name}_{fig_name}.png")
        report += dataset_section(name, params, runs, summary, paired, picked, scenarios, methods)
        v_lines, v_data = verdict(name, paired, ablations, summary, picked, scenarios, methods)
        verdict_lines += [*v_lines, ""]
        everything[name] = {
            "runs": len(runs),
            "seeds": sorted({r["seed"] for r in runs}),
            "methods": methods,
            "scenarios": scenarios,
            "summary": {f"{s}/{m}": e for (s, m), e in summary.items()},
            "paired_to_baseline": {f"{s}/{m}": p for (s, m), p in paired.items()},
            "selection": picked,
            "verdict": v_data,
            "train_seconds_total": round(sum(r["train_seconds"] for r in runs), 1),
        }
    report[intro:intro] = ["## Verdict (computed from the numbers below)", "", *verdict_lines]
    atomic.write_text(results / "report.md", "\n".join(report) + "\n")
    atomic.write_json(results / "science.json", everything)
    n_classes = max(len(load_params(HERE / f"params_{d}.yaml").data.classes) for d in datasets)
    per_class = [f"f1_class{i}" for i in range(n_classes)]
    atomic.write_csv(
        results / "runs.csv",
        ["dataset", "scenario", "method", "seed", "best_epoch", "train_seconds"]
        + [f"test_{m}" for m in METRICS]
        + ["val_g_mean", *per_class],
        run_rows,
    )
    atomic.write_csv(
        results / "summary.csv",
        ["dataset", "scenario", "method", "n"]
        + [f"{m}_{k}" for m in METRICS for k in ("mean", "sd")]
        + [f"{c}_{k}" for c in per_class for k in ("mean", "sd")],
        summary_rows,
    )
    atomic.write_csv(
        results / "paired.csv",
        ["dataset", "scenario", "method", "metric", "n", "mean", "sd", "ci_low", "ci_high"],
        paired_rows,
    )
    print(f"report: {results / 'report.md'}")
