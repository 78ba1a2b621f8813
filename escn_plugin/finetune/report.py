"""The fine-tune's report: ``DIR/report.md``, ``DIR/report.json`` and two figures
(``learning_curve.png``: validation errors against the optimizer step, fine-tune and
from-scratch; ``parity.png``: predicted against true test energies, forces and stresses,
before and after)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["learning_curve_figure", "parity_figure", "write_report"]

#: the evaluated models, in report order, with their labels
MODELS = {
    "references": "element references alone (energy only)",
    "start": "starting checkpoint as is (fitted references)",
    "step0": "step 0 of the conservative fine-tune (start's energy head, -dE/dx)",
    "finetuned": "fine-tuned",
    "from_scratch": "from scratch (same model and budget)",
}
UNITS = {
    "energy_mae": "eV",
    "energy_per_atom_mae": "eV/atom",
    "forces_mae": "eV/A",
    "stress_mae": "eV/A^3",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve_figure(curves: dict[str, dict], path: str | os.PathLike) -> Path:
    """Validation energy and force MAE against the step, one line per run (``curves``:
    ``{run: fairchem_runner.learning_curve(log)}``)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (key, title) in zip(axes, (("energy_mae", "energy"), ("forces_mae", "forces"))):
        for run, curve in curves.items():
            val = curve["val"]
            if val[key]:
                ax.plot(val["step"], val[key], "o-", ms=3, label=f"{run} (val)")
        ax.set(xlabel="optimizer step", ylabel=f"{title} MAE ({UNITS[key]})", yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parity_figure(predictions: dict[str, dict], path: str | os.PathLike) -> Path:
    """Rows: models; columns: energy, forces (and stress) on the test structures."""
    plt = _plt()
    keys = [
        k
        for k in ("energy", "forces", "stress")
        if any(f"{k}_pred" in p for p in predictions.values())
    ]
    fig, axes = plt.subplots(
        len(predictions),
        len(keys),
        figsize=(3.6 * len(keys), 3.4 * len(predictions)),
        squeeze=False,
    )
    for row, (name, pred) in enumerate(predictions.items()):
        for col, key in enumerate(keys):
            ax = axes[row][col]
            if f"{key}_pred" not in pred:
                ax.axis("off")
                continue
            x, y = pred[f"{key}_true"].ravel(), pred[f"{key}_pred"].ravel()
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.scatter(x, y, s=4, alpha=0.5)
            mae = float(np.abs(x - y).mean())
            ax.set(title=f"{name}: {key}, MAE {mae:.3g}", xlabel="true", ylabel="predicted")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _markdown(report: dict[str, Any]) -> str:
    data, test = report["data"], report["test"]
    counts = data["counts"]
    lines = [
        "# eSCN fine-tune",
        "",
        f"Start: `{report['start']['path']}` ({report['start']['origin']}); mode: "
        f"**{report['settings']['mode']}**; data: {counts['train']} train / {counts['val']} val "
        f"/ {counts['test']} test structures ({', '.join(data['elements'])}); stress: "
        f"{'yes' if report['settings']['stress'] else 'no'}.",
        "",
        f"Rerun or edit: `{report['command']['train']}`",
        "",
        "## Test errors (held-out structures, through OCPCalculator)",
        "",
    ]
    columns = [k for k in UNITS if any(k in row for row in test.values())]
    lines.append("| model | " + " | ".join(f"{k} ({UNITS[k]})" for k in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for name, label in MODELS.items():
        if name in test:
            row = test[name]
            lines.append(f"| {label} | " + " | ".join(_fmt(row.get(k)) for k in columns) + " |")
    ratios = report.get("ratios")
    if ratios:
        lines += [
            "",
            "Fine-tuned / from scratch: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()),
        ]
    if report.get("nve"):
        lines += ["", "## NVE energy drift (velocity Verlet, 1 fs, from 300 K)", ""]
        lines.append("| model | drift (eV/atom/ps) | E_tot std (eV) | steps | atoms |")
        lines.append("|---|---|---|---|---|")
        for name, row in report["nve"].items():
            lines.append(
                f"| {name} | {row['drift_ev_per_atom_ps']:.3g} | {row['etot_std_ev']:.3g} | "
                f"{row['steps']} | {row['natoms']} |"
            )
    lines += ["", "## Runs", ""]
    for name, run in report["runs"].items():
        lines.append(
            f"- {name}: {run['steps']} steps, {run['seconds']:.0f} s, model `{run['checkpoint']}`"
        )
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    if report.get("figures"):
        lines += ["", "![learning curve](learning_curve.png)", "", "![parity](parity.png)"]
    lines.append("")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(
    out_dir: str | os.PathLike,
    report: dict[str, Any],
    predictions: dict[str, dict],
    curves: dict[str, dict],
) -> dict[str, Path]:
    """Write the figures, ``report.json`` and ``report.md``; returns their paths."""
    out_dir = Path(out_dir)
    try:
        paths = {
            "learning_curve": learning_curve_figure(curves, out_dir / "learning_curve.png"),
            "parity": parity_figure(predictions, out_dir / "parity.png"),
        }
    except ImportError:  # matplotlib is an optional dependency of the plugin
        logging.getLogger(__name__).warning(
            "matplotlib is not installed: report written without figures (pip install matplotlib)"
        )
        paths = {}
    report = dict(report, figures={k: str(v) for k, v in paths.items()}, curves=curves)
    paths["json"] = out_dir / "report.json"
    paths["json"].write_text(json.dumps(_jsonable(report), indent=1))
    paths["md"] = out_dir / "report.md"
    paths["md"].write_text(_markdown(report))
    return paths
