"""From a sweep's results table to its page: statistics over seeds, a markdown table, the figure.

    page = write_report("experiments/results/init_scale")     # README.md, init_scale.png/.svg beside the table

What the page shows comes from the config's REPORT dict (all keys optional):
    title        the page's heading
    metric       the row metric to aggregate (default "test_accuracy"); percent=True shows it x100
    x, series    factor keys for the figure's x axis and its lines (default: the first non-seed factor)
    xscale       "log" | "linear" | "category" (points, no connecting line)
    order        the x values in the order the table and a category axis show them (default: sorted)
    heatmap      (x, y): a grid of means instead of lines (Houlsby et al. Fig. 6's layer spans)
    baseline     {factor: value}: paired differences (same seed) of every point against this one
    variants_only  table and plot only the rows of the config's evaluate() (not each run's own row)
    paper        the citation of the figure or table being reproduced
    paper_values {x: value}: the paper's numbers, drawn beside ours where they exist

Statistics per point (rows grouped by every factor but the seed): n, mean, sample standard deviation and
the 95% interval of the mean (Student's t with n-1 degrees of freedom). The noise floor printed on the
page: the test set's binomial sampling error at the mean accuracy, and the median seed spread. The
config's docstring (command, budget), the section of its `analyze` (analysis.md) and a hand-written notes.md
(the verdict) go on the page as written.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from adapters_jax.errors import ConfigError
from adapters_jax.sweeps import grid
from adapters_jax.sweeps.runner import ROOT, read_rows


def t95(n: int) -> float:
    """The two-sided 95% Student t quantile for n samples (n-1 degrees of freedom); nan for n < 2."""
    if n < 2:
        return float("nan")
    from scipy import stats  # a JAX dependency

    return float(stats.t.ppf(0.975, n - 1))


def summarize(values: list[float]) -> dict:
    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "sd": sd, "ci95": t95(n) * sd / math.sqrt(n) if n > 1 else float("nan")}


def _key(factors: dict, drop=("seed",)) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in factors.items() if k.rsplit(".", 1)[-1] not in drop))


def aggregate(rows: list[dict], metric: str) -> list[dict]:
    """One entry per point (factors without the seed): its factors, the per-seed values and summarize()."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if metric in r["metrics"]:
            groups[_key(r["factors"])].append(r)
    out = []
    for rs in groups.values():
        factors = {k: v for k, v in rs[0]["factors"].items() if k.rsplit(".", 1)[-1] != "seed"}
        values = {r["seed"]: r["metrics"][metric] for r in rs}
        peaks = [r["peak_host_mb"] for r in rs if r.get("peak_host_mb")]
        out.append({"factors": factors, "values": values, "trainable_params": rs[0].get("trainable_params"),
                    "trainable_share": rs[0].get("trainable_share"), "peak_host_mb": max(peaks) if peaks else None,
                    **summarize(list(values.values()))})
    return out


def paired(points: list[dict], baseline: dict) -> None:
    """Adds "diff" (summarize() of point - baseline over the seeds both have) to each point, in place."""
    base = [p for p in points if all(p["factors"].get(k) == v for k, v in baseline.items())]
    if len(base) != 1:
        raise ConfigError(f"REPORT baseline {baseline} matches {len(base)} points; it must match one")
    for p in points:
        seeds = sorted(set(p["values"]) & set(base[0]["values"]))
        if seeds:
            p["diff"] = summarize([p["values"][s] - base[0]["values"][s] for s in seeds])


def noise_floor(rows: list[dict], points: list[dict], metric: str) -> dict:
    """Test-set sampling error (binomial, at the mean of the points) and the median seed spread."""
    out = {"seed_sd": statistics.median([p["sd"] for p in points if p["n"] > 1] or [float("nan")])}
    n_test = next((r.get("split_counts", {}).get("test") for r in rows if r.get("split_counts")), None)
    if metric.endswith("accuracy") and n_test:
        p = statistics.fmean(pt["mean"] for pt in points)
        out.update(n_test=n_test, sampling_se=math.sqrt(p * (1 - p) / n_test))
    return out


def _fmt(v, scale):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.2f}"


def _factor_text(v) -> str:
    return v if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)


def table(points: list[dict], scale: float) -> str:
    keys = sorted({k for p in points for k in p["factors"]})
    has_diff = any("diff" in p for p in points)
    has_peak = any(p.get("peak_host_mb") for p in points)
    head = [k.rsplit(".", 1)[-1] for k in keys] + ["trainable (%)"] + (["peak RSS MB"] if has_peak else []) + [
        "n", "mean", "sd", "95% CI"] + (["paired diff", "diff 95% CI"] if has_diff else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        cells = [_factor_text(p["factors"].get(k, "")) for k in keys]
        share = p.get("trainable_share")
        cells += ["—" if share is None else f"{p['trainable_params']:,} ({share:.2f})"]
        cells += [f"{p['peak_host_mb']:,.0f}" if p.get("peak_host_mb") else "—"] if has_peak else []
        cells += [str(p["n"]), _fmt(p["mean"], scale), _fmt(p["sd"], scale), "±" + _fmt(p["ci95"], scale)]
        if has_diff:
            d = p.get("diff")
            cells += [_fmt(d and d["mean"], scale), "±" + _fmt(d and d["ci95"], scale)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _order_key(spec: dict, v):
    order = list(spec.get("order", []))
    return (order.index(v), _sort_key(v)) if v in order else (len(order), _sort_key(v))


def plot(points: list[dict], spec: dict, scale: float, out_stem: Path) -> list[Path]:
    """The figure as PNG and SVG: lines with 95% intervals, or a heatmap of means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = spec.get("metric", "test_accuracy")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if "heatmap" in spec:
        kx, ky = spec["heatmap"]
        num = (int, float)
        points = [p for p in points if isinstance(p["factors"].get(kx), num) and isinstance(p["factors"].get(ky), num)]
        xs = sorted({p["factors"][kx] for p in points}, key=_sort_key)
        ys = sorted({p["factors"][ky] for p in points}, key=_sort_key)
        grid_ = [[math.nan] * len(xs) for _ in ys]
        for p in points:
            grid_[ys.index(p["factors"][ky])][xs.index(p["factors"][kx])] = p["mean"] * scale
        im = ax.imshow(grid_, origin="lower", cmap="viridis")
        lo, hi = im.get_clim()
        for i, row in enumerate(grid_):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                            color="k" if v > (lo + hi) / 2 else "w")
        ax.set_xticks(range(len(xs)), [_factor_text(x) for x in xs])
        ax.set_yticks(range(len(ys)), [_factor_text(y) for y in ys])
        ax.set_xlabel(kx.rsplit(".", 1)[-1])
        ax.set_ylabel(ky.rsplit(".", 1)[-1])
        fig.colorbar(im, ax=ax, label=metric)
    else:
        kx = spec.get("x") or next(iter(points[0]["factors"]))
        ks, kl = spec.get("series"), spec.get("label")
        xof = lambda p: p["factors"][kx] if kx in p["factors"] else p[kx]  # noqa: E731  (a factor or a row field)
        series = defaultdict(list)
        for p in points:
            series[_factor_text(p["factors"].get(ks, "")) if ks else ""].append(p)
        for name, ps in series.items():
            ps = sorted(ps, key=lambda p: _order_key(spec, xof(p)))
            xs = [xof(p) if spec.get("xscale") != "category" else _factor_text(xof(p)) for p in ps]
            ax.errorbar(xs, [p["mean"] * scale for p in ps], yerr=[p["ci95"] * scale if p["n"] > 1 else 0 for p in ps],
                        marker="o", capsize=3, label=name or "ours (mean, 95% CI)",
                        linestyle="none" if kl or spec.get("xscale") == "category" else "-")
            for p, x in zip(ps, xs) if kl else ():
                ax.annotate(_factor_text(p["factors"][kl]), (x, p["mean"] * scale), fontsize=7,
                            textcoords="offset points", xytext=(4, -10))
        if spec.get("paper_values"):
            pv = sorted(spec["paper_values"].items(), key=lambda kv: _sort_key(kv[0]))
            ax.plot([k for k, _ in pv], [v for _, v in pv], "k--", marker="x", label="paper")
        if spec.get("xscale") in ("log", "linear"):
            ax.set_xscale(spec["xscale"])
        elif sum(len(t.get_text()) for t in ax.get_xticklabels()) > 40:  # long category names: slanted
            ax.tick_params(axis="x", labelrotation=30)
            for t in ax.get_xticklabels():
                t.set_horizontalalignment("right")
        ax.set_xlabel(kx.rsplit(".", 1)[-1])
        ax.set_ylabel(metric + (" (%)" if scale == 100 else ""))
        if ks or spec.get("paper_values"):
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax.set_title(spec.get("title", out_stem.name), fontsize=10)
    fig.tight_layout()
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    for p in paths:  # no date, fixed element ids: a rerun on the same rows writes the same bytes
        with plt.rc_context({"svg.hashsalt": "adapters_jax"}):
            fig.savefig(p, dpi=120, metadata={"Date": None})
    plt.close(fig)
    return paths


def write_report(results: str | Path, config_path: str | Path | None = None,
                 workdir: str | Path | None = None) -> Path:
    """Write RESULTS_DIR/README.md and the figure for a results table (a .jsonl file or the directory
    holding results.jsonl); the config is the one the rows name unless `config_path` is given. A config
    with `analyze(workdir, out_dir)` (an analysis across its runs' directories, default runs/sweeps/NAME)
    gets it run when those directories are here, its section kept in analysis.md for later pages."""
    results = Path(results)
    table_path = results / "results.jsonl" if results.is_dir() else results
    rows = read_rows(table_path)
    if not rows:
        raise ConfigError(f"{table_path} holds no rows; run the sweep first (scripts/sweep.py)")
    name = rows[0]["sweep"]
    config_path = Path(config_path) if config_path else next(
        (p for p in (ROOT / "experiments").rglob(f"{name}.py")), None)
    if config_path is None:
        raise ConfigError(f"no experiments/**/{name}.py for the sweep {name!r}; pass the config file")
    module = grid.load_module(config_path)
    spec = dict(getattr(module, "REPORT", {}))
    metric = spec.get("metric", "test_accuracy")
    scale = 100.0 if spec.get("percent", metric.endswith("accuracy")) else 1.0
    # variants_only: the config's evaluate rows carry the design (the run's own row repeats one of them)
    points = aggregate([r for r in rows if r.get("variant") is not None] if spec.get("variants_only") else rows,
                       metric)
    if not points:
        raise ConfigError(f"no row of {table_path} has the metric {metric!r}")
    points.sort(key=lambda p: tuple(_sort_key(p["factors"][k]) for k in sorted(p["factors"])))
    if spec.get("order") and spec.get("x"):
        points.sort(key=lambda p: _order_key(spec, p["factors"].get(spec["x"])))  # stable: the rest stays sorted
    if spec.get("baseline"):
        paired(points, spec["baseline"])
    out_dir = table_path.parent
    figs = plot(points, spec, scale, out_dir / name)
    floor = noise_floor(rows, points, metric)
    try:
        rel = config_path.resolve().relative_to(ROOT)
    except ValueError:
        rel = config_path
    commits = sorted({r.get("commit") or "?" for r in rows})
    lines = [f"# {spec.get('title', name)}", "", (module.__doc__ or "").strip(), "",
             f"Config: `{rel}`. Rerun: `python scripts/sweep.py --config {rel}` then "
             f"`python scripts/report.py {out_dir.relative_to(ROOT) if out_dir.is_relative_to(ROOT) else out_dir}`.",
             "", f"## Result: {metric}" + (" (%)" if scale == 100 else ""), "", table(points, scale), "",
             f"![{name}]({figs[0].name})", ""]
    nf = [f"median seed standard deviation {_fmt(floor['seed_sd'], scale)}"]
    if "sampling_se" in floor:
        nf.insert(0, f"test-set sampling error ±{_fmt(floor['sampling_se'], scale)} (one binomial standard error "
                     f"at the mean accuracy over {floor['n_test']} test examples; 95%: "
                     f"±{_fmt(1.96 * floor['sampling_se'], scale)})")
    lines += ["Noise floor: " + "; ".join(nf) + ".", ""]
    if spec.get("paper"):
        lines += [f"Paper: {spec['paper']}", ""]
    run_dirs = Path(workdir) if workdir else ROOT / "runs" / "sweeps" / name
    if hasattr(module, "analyze") and run_dirs.is_dir():
        section = module.analyze(run_dirs, out_dir)
        if section:
            (out_dir / "analysis.md").write_text("\n".join(section).strip() + "\n")
    if (out_dir / "analysis.md").exists():
        lines += [(out_dir / "analysis.md").read_text().strip(), ""]
    if (out_dir / "notes.md").exists():
        lines += ["## What we see", "", (out_dir / "notes.md").read_text().strip(), ""]
    train_h = sum(r.get("train_s", 0) for r in rows if r.get("variant") is None) / 3600
    lines += [f"Runs: {len({r['point'] for r in rows})} points x seeds = "
              f"{sum(1 for r in rows if r.get('variant') is None)} training runs ({train_h:.2f} h of training "
              f"steps) on {', '.join(sorted({r.get('host', '?') for r in rows}))}; commit(s) {', '.join(commits)}; "
              f"table `{table_path.name}`.", ""]
    page = out_dir / "README.md"
    page.write_text("\n".join(lines))
    return page
