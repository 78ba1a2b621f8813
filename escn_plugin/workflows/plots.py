"""The main job's figures: parity plots and the learning curve."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def parity_plot(test: dict[str, Any], path: str | os.PathLike, relax: dict | None = None) -> Path:
    """Predicted vs EMT force components and energies (test split; relaxed energies too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if relax is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.4))

    def panel(ax, x, y, title, unit, **kw):
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.scatter(x, y, **kw)
        ax.set(xlabel=f"EMT {unit}", ylabel=f"eSCN {unit}", title=title)
        ax.set_aspect("equal", adjustable="box")

    ft, fp = test["forces_true"], test["forces_pred"]
    for k, (c, name) in enumerate(zip("rgb", "xyz")):
        panel(axes[0], ft[:, k], fp[:, k], "", "force (eV/A)", s=3, alpha=0.4, c=c, label=name)
    axes[0].set_title(f"test forces (free atoms), MAE {test['forces_mae']:.3f} eV/A")
    axes[0].legend(markerscale=3, loc="upper left")
    panel(
        axes[1], test["energy_true"], test["energy_pred"],
        f"test energies, MAE {test['energy_mae']:.3f} eV", "energy (eV)", s=12,
    )  # fmt: skip
    if relax is not None:
        panel(
            axes[2], relax["energy_true"], relax["energy_pred"],
            f"relaxed energies (IS2RE), MAE {relax['is2re_energy_mae']:.3f} eV",
            "relaxed energy (eV)", s=25, c="m",
        )  # fmt: skip
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curve_plot(
    curve: dict[str, dict[str, list[float]]],
    path: str | os.PathLike,
    baselines: dict[str, float] | None = None,
) -> Path:
    """Train and val loss, energy MAE and force MAE against the optimizer step (log scale;
    from :func:`~escn_plugin.workflows.fairchem_runner.learning_curve`). ``baselines``
    (``{"energy_mae": .., "forces_mae": ..}``, val) are drawn as dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.8, 4.0))
    titles = {
        "loss": "loss (normalised units)",
        "energy_mae": "energy MAE (eV)",
        "forces_mae": "force MAE (eV/A)",
    }
    for ax, (key, title) in zip(axes, titles.items()):
        for split, style in (("train", "-"), ("val", "o-")):
            steps, values = curve[split]["step"], curve[split][key]
            if values:
                ax.plot(steps, values, style, label=split, ms=3)
        if baselines and key in baselines:
            ax.axhline(baselines[key], ls=":", c="k", label="baseline (val)")
        ax.set(xlabel="optimizer step", title=title, yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
