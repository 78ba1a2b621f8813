"""The main job's report (markdown) and results (json)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def format_report(results: dict[str, Any]) -> str:
    """The markdown report of a demo run (``results`` as :func:`run_demo` builds it)."""
    r = results
    lines = [
        "# eSCN demo report",
        "",
        f"Dataset: OC20-EMT `{r['size']}` (seed {r['seed']}), {r['data_root']}: "
        f"{r['n_systems']['train']}/{r['n_systems']['val']}/{r['n_systems']['test']} "
        f"train/val/test systems (split by system: val and test systems are not seen in "
        f"training), S2EF {r['n_frames']['train']}/{r['n_frames']['val']}/"
        f"{r['n_frames']['test']} frames; generated in {r['data_seconds']:.0f} s. "
        f"Energies: {r['energy_definition']}.",
        f"Model: `{r['model']['name']}` "
        + ", ".join(f"{k}={v}" for k, v in r["model"].items() if k != "name")
        + f"; {r['n_params']:,} parameters.",
        f"Training: {r['epochs']} epochs with `fairchem --mode train --cpu` in "
        f"{r['train_seconds']:.0f} s; total wall time {r['wall_seconds']:.0f} s"
        + (f", CPU time {r['cpu_seconds']:.0f} s." if "cpu_seconds" in r else "."),
        "",
        "![learning curve](learning_curve.png) ![parity](parity.png)",
        "",
        "## S2EF (energy MAE in eV, force MAE in eV/A on free atoms)",
        "",
        "| split | eSCN energy | eSCN forces | train-mean energy | element-reference energy "
        "| zero forces |",
        "|---|---|---|---|---|---|",
    ]
    for split in ("val", "test"):
        m, b = r["s2ef"][split], r["baseline"][split]
        lines.append(
            f"| {split} | {m['energy_mae']:.4f} | {m['forces_mae']:.4f} | "
            f"{b['energy_mae']:.4f} | {b['energy_mae_element_references']:.4f} | "
            f"{b['forces_mae']:.4f} |"
        )
    lines += [
        "",
        f"Baselines: the training-set mean energy ({r['train_energy_mean']:.3f} eV); the "
        "linear per-element references fit on train (least squares on element counts), "
        "which eSCN is trained on top of (fairchem `transforms.element_references`); zero "
        "forces. val: `fairchem --mode validate`; test: computed from `--mode predict`'s npz "
        "against the LMDB labels.",
    ]
    test, base = r["s2ef"]["test"], r["baseline"]["test"]
    lines += [
        "",
        "Test figures against their baselines (smaller is better; 1 = no better than the "
        f"baseline): energy MAE / element-reference MAE "
        f"{test['energy_mae'] / base['energy_mae_element_references']:.3f}; force MAE / "
        f"zero-force MAE {test['forces_mae'] / base['forces_mae']:.3f}"
        + (
            f"; IS2RE MAE / train-mean MAE "
            f"{r['relax']['is2re_energy_mae'] / r['relax']['is2re_baseline_mae']:.3f}"
            if r.get("relax") is not None and "is2re_baseline_mae" in r["relax"]
            else ""
        )
        + ".",
    ]
    rel = r.get("relax")
    if rel is not None:
        a, z = rel["is2rs"], rel["initial_as_relaxed"]
        logged = rel.get("fairchem_logged", {})
        lines += [
            "",
            f"## Relaxations ({rel['n_systems']} IS2RS {r['relax_split']} systems, fairchem's "
            f"batched L-BFGS, at most {r['relax_steps']} steps, fmax {r['relax_fmax']} eV/A; "
            f"{r.get('relax_max_steps_taken', '?')} steps taken)",
            "",
            "| | eSCN relaxation | initial structure (no relaxation) |",
            "|---|---|---|",
            f"| IS2RS ADwT (0.01-0.5 A) | {a['adwt']:.3f} | {z['adwt']:.3f} |",
            f"| IS2RS DwT at 0.1 A | {a['dwt_0.1']:.3f} | {z['dwt_0.1']:.3f} |",
            f"| mean free-atom distance to the EMT relaxed structure (A) | "
            f"{a['mean_distance']:.4f} | {z['mean_distance']:.4f} |",
            f"| IS2RE energy MAE (eV) | {rel['is2re_energy_mae']:.4f} | "
            f"baselines: train mean of relaxed energies "
            f"{rel.get('is2re_baseline_mae', float('nan')):.4f}, element references "
            f"{rel.get('is2re_baseline_mae_element_references', float('nan')):.4f} |",
            f"| IS2RE EwT (0.02 eV) | {rel['is2re_ewt']:.3f} | |",
            "",
            "ADwT as fairchem's `average_distance_within_threshold` (per structure: mean "
            "minimum-image distance over free atoms; the fraction of structures below each "
            "threshold 0.01, 0.011, ..., 0.499 A, averaged)"
            + (
                f"; fairchem's own log after the relaxation says "
                f"{logged['positions_average_distance_within_threshold']:.3f}"
                if "positions_average_distance_within_threshold" in logged
                else ""
            )
            + ". IS2RE: the model's energy (best_checkpoint.pt through OCPCalculator) at "
            "the relaxed positions vs EMT's relaxed energy"
            + (
                f"; the IS2RE MAE fairchem 1.10 logs ({logged['energy_mae']:.4f} eV) is "
                "wrong (it broadcasts (B, 1) against (B,))"
                if "energy_mae" in logged
                else ""
            )
            + ".",
            "Trajectories whose last frame is not the final structure (fairchem stops "
            "writing a system once it converges): "
            + (", ".join(rel["stale_trajectories"]) or "none")
            + ".",
        ]
    rot = r.get("rotation")
    if rot is not None:
        lines += [
            "",
            "## Rotation equivariance of the trained model",
            "",
            f"{rot['n_structures']} test structures x {rot['n_rotations']} random rotations "
            "(positions and cell), float32 through `OCPCalculator`: force error "
            f"max |F(Rx) - R F(x)| / max |F(x)| = {rot['force_error_max']:.1e} (median "
            f"{rot['force_error_median']:.1e}); energy error |E(Rx) - E(x)| = "
            f"{rot['energy_error_max']:.1e} eV (median {rot['energy_error_median']:.1e}); "
            f"largest force {rot['max_force']:.2f} eV/A.",
        ]
    md = r.get("nve")
    if md is not None:
        m, f = md["model"], md["emt"]
        lines += [
            "",
            "## NVE energy drift",
            "",
            f"Velocity Verlet, {m['steps']} steps of {m['timestep_fs']:g} fs from "
            f"{m['temperature_K']:.0f} K, {md['system']} ({m['natoms']} atoms, sub-surface "
            "atoms fixed), through `OCPCalculator`; drift = slope of E_pot + E_kin:",
            "",
            "| forces | drift (eV/atom/ps) | E_tot std (eV) | E_kin std (eV) |",
            "|---|---|---|---|",
            f"| eSCN (direct forces, as the paper) | {m['drift_ev_per_atom_ps']:+.2e} | "
            f"{m['etot_std_ev']:.2e} | {m['ekin_std_ev']:.2e} |",
            f"| EMT (the labels; conservative) | {f['drift_ev_per_atom_ps']:+.2e} | "
            f"{f['etot_std_ev']:.2e} | {f['ekin_std_ev']:.2e} |",
            "",
            "Direct forces are not the gradient of the model's energy, so E_tot need not be "
            "conserved; `direct_forces: False` (README, conservative forces) makes them so.",
        ]
    lines += [
        "",
        "## Submission file",
        "",
        f"`{r['submission']}` from `python -m fairchem.core.scripts.make_submission_file`: "
        f"keys {', '.join(sorted(r['submission_keys']))}.",
        "**Stand-in:** OC20 S2EF wants predictions on four test splits (id, ood_ads, "
        "ood_cat, ood_both); this dataset has one test split, so the same predictions file "
        "was passed for all four.",
        "",
        "## Files",
        "",
    ]
    lines += [f"- {name}: `{path}`" for name, path in r["files"].items()]
    return "\n".join(lines) + "\n"


def count_parameters(checkpoint: str | os.PathLike) -> int:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]  # not _extra_state
    return int(sum(v.numel() for v in tensors if v.dtype.is_floating_point))


def jsonable(value: Any) -> Any:
    """``json.dumps`` default: arrays as lists, numpy scalars as numbers, else ``str``."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
