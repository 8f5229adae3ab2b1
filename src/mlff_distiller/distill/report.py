"""The report of an ``mlffd distill`` run: error against teacher calls, uncertainty along the
student MD, the calibration of the uncertainty on held-out teacher MD, the model's size and
speed. Written to ``<out>/report.md`` with PNG plots beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlff_distiller.distill.holdout import holdout_predictions


def write_report(out: Path, summary: dict) -> Path:
    """``out/report.md`` and its plots from ``summary`` (see :func:`run_distill`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlff_distiller.evaluation.uncertainty import plot_calibration, uncertainty_along_md

    cfg = summary["config"]
    history = summary["iterations"]
    lines = [
        "# mlffd distill report",
        "",
        f"Teacher **{cfg['teacher']}**; molecules: "
        + ", ".join(cfg["smiles"] + cfg["structures"])
        + ".",
        f"Status: **{summary['status']}** after {summary['teacher_calls']} teacher calls "
        f"(budget {cfg['budget']}). Committee of {cfg['members']} '{cfg['size']}' students; "
        f"uncertainty threshold {cfg['max_uncertainty']:g} eV/Å (largest per-atom committee "
        f"force deviation); student MD {cfg['md_fs']:g} fs per replica at "
        + ", ".join(f"{t:g}" for t in cfg["temperatures_k"])
        + " K"
        + (
            f", plus one run at the top temperature under a {cfg['explore_bias_kt']:g} kT "
            "uncertainty bias (its candidates in the table, its lost replicas not)."
            if cfg.get("explore_bias_kt", 0) > 0
            else "."
        ),
        "",
    ]
    scored = [h for h in history if "holdout_force_mae_mev" in h]
    lines += [
        "| iteration | teacher calls | held-out force MAE (meV/Å) | energy MAE (meV/atom) "
        "| rank corr. | candidates | lost replicas |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in history:
        lines.append(
            f"| {h['iteration']} | {h['teacher_calls']} | "
            f"{h.get('holdout_force_mae_mev', float('nan')):.1f} | "
            f"{h.get('holdout_energy_mae_mev_per_atom', float('nan')):.2f} | "
            f"{h.get('holdout_spearman', float('nan')):.2f} | {h.get('candidates', '-')} | "
            f"{h.get('lost_replicas', '-')} |"
        )
    lines.append("")
    if scored:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(
            [h["teacher_calls"] for h in scored], [h["holdout_force_mae_mev"] for h in scored], "o-"
        )
        ax.set_xlabel("teacher calls")
        ax.set_ylabel("held-out force MAE (meV/Å)")
        ax.set_title(f"held-out teacher MD at {max(cfg['temperatures_k']):g} K")
        fig.tight_layout()
        fig.savefig(out / "error_vs_calls.png", dpi=120)
        plt.close(fig)
        lines += ["![error against teacher calls](error_vs_calls.png)", ""]
    last = max((h["iteration"] for h in history if "candidates" in h), default=None)
    if last is not None:
        traces = np.load(out / f"iter_{last:02d}" / "traces.npz")
        t_top = f"{max(cfg['temperatures_k']):g}K"
        if t_top in traces:
            u = traces[t_top]
            times = np.arange(len(u)) * cfg["save_every"] * cfg["dt_fs"]
            uncertainty_along_md(times, u, cfg["max_uncertainty"], out / "uncertainty_md.png")
            lines += [
                f"Committee uncertainty along the student MD at {t_top} of iteration "
                f"{last}, each replica a line:",
                "",
                "![uncertainty along MD](uncertainty_md.png)",
                "",
            ]
    holdout = out / "holdout.h5"
    model_path = Path(summary["model_path"])
    if holdout.exists():
        pred = holdout_predictions(model_path, holdout)
        _, cal = plot_calibration(
            pred["sigma"], pred["error"], pred["system_idx"], out / "calibration.png"
        )
        lines += [
            "## Calibration on the held-out teacher MD",
            "",
            f"Rank correlation of predicted and true per-structure force RMSE: "
            f"{cal['spearman_structure_rmse']:.2f} (largest per-atom uncertainty against "
            f"largest per-atom error: {cal['spearman_structure']:.2f}); coverage of the "
            f"1/2/3-sigma intervals {cal['coverage_1sigma']:.0%} / "
            f"{cal['coverage_2sigma']:.0%} / {cal['coverage_3sigma']:.0%} "
            f"(Gaussian: 68/95/100%); fitted sigma scale "
            f"{cal['sigma_scale']:.2f}.",
            "",
            "![calibration](calibration.png)",
            "",
        ]
        (out / "calibration.json").write_text(json.dumps(cal, indent=2))
    lines += _size_and_speed(model_path)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _size_and_speed(model_path: Path) -> list[str]:
    from mlff_distiller.data.structures import from_smiles
    from mlff_distiller.evaluation.report import ms_per_call
    from mlff_distiller.md.calculator import StudentCalculator
    from mlff_distiller.models.io import load_model, read_config

    model = load_model(model_path)
    n_params = sum(p.numel() for p in model.parameters())
    config = read_config(model_path)["config"]
    atoms = from_smiles("CC(=O)Oc1ccccc1C(=O)O", seed=0)[0]  # aspirin: a common yardstick
    ms = ms_per_call(StudentCalculator(model, compile=False), atoms, repeats=20, budget_s=10)
    painn = config.get("painn", config)
    members = config.get("members", 1)
    return [
        "## Model",
        "",
        f"`{model_path}`: {members} students of PaiNN with {painn['hidden']} features, "
        f"{painn['n_interactions']} blocks, cutoff {painn['cutoff']:g} Å, "
        f"{'shared' if painn.get('shared_filters') else 'separate'} filters; "
        f"{n_params:,} parameters in all; {ms:.2f} ms per energy+forces call of the whole "
        "committee on aspirin (21 atoms), eager, one thread.",
        "",
    ]
