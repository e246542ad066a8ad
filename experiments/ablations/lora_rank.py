"""Ablation 5: LoRA rank and target matrices at a fixed budget (Hu et al. 2021, Tables 5-6).

    python scripts/sweep.py --config experiments/ablations/lora_rank.py
    python scripts/report.py experiments/results/lora_rank

MiniLM-L6 on rt_polarity, 150 steps of 32, seeds 0-2, alpha = r (scaling 1): on {q, v}, r in
{1, 2, 4, 8, 16, 64}; at a budget of 16 ranks per layer, {q}, {k}, {v}, {o} at r=16, {q, k} and {q, v} at
r=8, all four at r=4. Budget: ~2 min per run on the 2-core CPU, 33 runs, about 70 minutes.
The paper (GPT-3, WikiSQL/MNLI): rank 1-4 on {q, v} is as good as 64; spreading the budget over more
matrices beats a high rank on one.
Then (scripts/report.py calls `analyze` on the run directories) the subspace similarity of each seed's r=8
and r=64 updates on {q, v}, layer by layer (Fig. 3; adapters_jax/sweeps/subspace.py), for A as in the
paper and for the whole update dW = A @ B, with the r=64 runs of two seeds as the control (Fig. 4).
"""
import json
from pathlib import Path

import numpy as np

from adapters_jax import paths
from adapters_jax.sweeps import grid, subspace
from experiments.ablations import common

TARGETS = {
    **{f"qv_r{r}": common.lora(r) for r in (1, 2, 4, 8, 16, 64)},
    **{f"{n}_r16": common.lora(16, (role,)) for n, role in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "attn_out"))},
    "qk_r8": common.lora(8, ("q", "k")),
    "qkvo_r4": common.lora(4, ("q", "k", "v", "attn_out")),
}


def get_config():
    return common.recipe(max_steps=150, lora="qv_r8")


def finalize(c):
    c.adapter = TARGETS[c.ablation.lora]
    return c


def sweep():
    return grid.product(grid.axis("ablation.lora", list(TARGETS)), grid.axis("seed", common.SEEDS))


REPORT = {
    "title": "LoRA rank and targets (Hu et al. 2021, Tables 5-6)",
    "x": "ablation.lora", "xscale": "category", "order": list(TARGETS), "baseline": {"ablation.lora": "qv_r8"},
    "paper": "Hu et al. 2021, LoRA, Table 5 (which matrices at 18M parameters: {q,v} r=4 and all four r=2 best) "
             "and Table 6 (rank: r=1 on {q,v} within a point of r=64 on WikiSQL and MNLI).",
}


LOW, HIGH = "qv_r8", "qv_r64"


def _lora_matrices(run_dir: Path, config) -> dict:
    """{(layer, role): (A, B, A at initialisation)} of a finished point's final adapter."""
    from adapters_jax.partition import split
    from adapters_jax.train import loop

    _, _, _, params, labels = loop.build(config)
    initial = paths.flat(split(params, labels)[0])
    final = paths.flat(loop.final_trainable(run_dir, config, params, labels))
    out = {}
    for p, a in final.items():
        if p.endswith("/lora_A"):
            where = (paths.layer_index(p), paths.role_of(p.split("/lora/")[0]))
            out[where] = (np.asarray(a), np.asarray(final[p[:-1] + "B"]), np.asarray(initial[p]))
    return out


def analyze(workdir: Path, out_dir: Path) -> list[str]:
    """Hu et al. Fig. 3 on this sweep's runs: writes subspace.json and subspace.png/.svg into out_dir and
    returns the page's section (markdown lines). Seeds whose r=8 or r=64 run is missing are skipped."""
    seeds = [s for s in common.SEEDS if all((workdir / f"lora={r},seed={s}" / "report.json").exists()
                                            for r in (LOW, HIGH))]
    if not seeds:
        return []
    module = grid.load_module(__file__)  # this file as a sweep module, once: the points' configs
    pts = grid.points(module, __file__)
    runs = {(r, s): _lora_matrices(workdir / f"lora={r},seed={s}", grid.config_for(module, pts[f"lora={r},seed={s}"]))
            for r in (LOW, HIGH) for s in seeds}
    dim = next(iter(runs[HIGH, seeds[0]].values()))[0].shape[0]
    rows, heat = [], {}
    for where in sorted(runs[LOW, seeds[0]]):
        per_seed = []
        for s in seeds:
            a8, b8, a8_0 = runs[LOW, s][where]
            a64, b64, a64_0 = runs[HIGH, s][where]
            phi_a = subspace.similarity(subspace.directions(a8), subspace.directions(a64))
            phi_dw = subspace.similarity(subspace.update_directions(a8, b8), subspace.update_directions(a64, b64))
            rec = {"seed": s, "moved_A_r8": subspace.relative_change(a8, a8_0),
                   "moved_A_r64": subspace.relative_change(a64, a64_0),
                   "phi_A_1_1": phi_a[0, 0], "phi_A_1_64": phi_a[0, -1], "phi_A_8_64": phi_a[-1, -1],
                   "phi_dW_1_1": phi_dw[0, 0], "phi_dW_1_64": phi_dw[0, -1], "phi_dW_8_64": phi_dw[-1, -1]}
            if s != seeds[0]:  # control (Fig. 4): the r=64 updates of two seeds
                ref = runs[HIGH, seeds[0]][where]
                rec["seeds_phi_dW_1_1"] = subspace.similarity(subspace.update_directions(*ref[:2]),
                                                              subspace.update_directions(a64, b64))[0, 0]
            per_seed.append({k: float(v) for k, v in rec.items()})
            heat.setdefault(where, []).append((phi_a, phi_dw))
        rows.append({"layer": where[0], "role": where[1], "seeds": per_seed})
    level = subspace.random_level(dim, 8, 64)
    summary = {"dim": dim, "seeds": seeds, "random_level": {"phi_1_1": level[0, 0], "phi_1_64": level[0, -1],
                                                            "phi_8_64": level[-1, -1]}, "layers": rows}
    (out_dir / "subspace.json").write_text(json.dumps(summary, indent=1) + "\n")
    last = max(w[0] for w in heat)
    _plot({role: [np.mean([h[k] for h in heat[last, role]], axis=0) for k in (0, 1)] for role in ("q", "v")},
          last, out_dir / "subspace")
    return _section(summary, last)


def _plot(mean_phi: dict, layer: int, stem: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 4.2), constrained_layout=True)
    for col, role in enumerate(("q", "v")):
        for row, what in enumerate(("A", "dW = A B")):
            ax = axes[row, col]
            im = ax.imshow(mean_phi[role][row], vmin=0, vmax=1, cmap="viridis", aspect="auto",
                           extent=(0.5, 64.5, 8.5, 0.5))
            ax.set_title(f"layer {layer} W_{role}: {what}", fontsize=9)
            ax.set_xlabel("j (r=64)")
            ax.set_ylabel("i (r=8)")
    fig.colorbar(im, ax=axes, shrink=0.8, label="phi(i, j)")
    for ext in ("png", "svg"):
        fig.savefig(f"{stem}.{ext}", dpi=110)
    plt.close(fig)


def _section(summary: dict, last: int) -> list[str]:
    def cell(layer, key):
        v = [s[key] for s in layer["seeds"] if key in s]
        return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else (f"{v[0]:.3f}" if v else "-")

    keys = ["moved_A_r8", "moved_A_r64", "phi_A_1_1", "phi_A_1_64", "phi_A_8_64", "phi_dW_1_1", "phi_dW_1_64",
            "seeds_phi_dW_1_1"]  # phi_dW_8_64 = phi_A_8_64 whenever B has full rank: the same column space
    rl = summary["random_level"]
    lines = ["## Subspace similarity of the r=8 and r=64 updates (Hu et al. 2021, Fig. 3)", "",
             f"phi(i, j) between the top-i directions of the r=8 update and the top-j of the r=64 update of the "
             f"same seed (mean ± sd over seeds {summary['seeds']}); moved = ||A - A_init|| / ||A_init||; the last "
             f"column is the r=64 updates of seed {summary['seeds'][0]} against each other seed (Fig. 4's control). "
             f"Two random subspaces of R^{summary['dim']}: phi(1,1) = {rl['phi_1_1']:.4f}, phi(1,64) = "
             f"{rl['phi_1_64']:.3f}, phi(8,64) = {rl['phi_8_64']:.3f}. Numbers: `subspace.json`.", "",
             "| layer | W | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for layer in summary["layers"]:
        lines.append(f"| {layer['layer']} | {layer['role']} | " + " | ".join(cell(layer, k) for k in keys) + " |")
    lines += ["", f"![subspace similarity, layer {last}](subspace.png)", ""]
    return lines
