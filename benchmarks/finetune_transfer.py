"""Does fine-tuning transfer? eSCN pretrained on OC20-EMT, fine-tuned on unseen alloys.

1. Pretrain a small direct eSCN with the stock ``fairchem --mode train`` on the plugin's
   OC20-EMT ``demo`` data (adsorbates on pure-metal slabs; generated once, cached).
2. A domain it never saw: 200 EMT-labelled binary fcc alloys of Cu/Ag/Au/Ni/Pd/Pt (8-atom
   bulk cells, strained and rattled, and every 4th a 12-atom (111) slab), with stresses,
   written as extended XYZ.
3. ``python -m escn_plugin.finetune --from-scratch`` (direct) with 3 seeds (split and
   training seed): the pretrained start vs the same model and step budget from fresh
   weights; held-out test errors through OCPCalculator.
4. Conservative (eSEN's stage 2): ``--conservative --from-scratch`` from the same direct
   checkpoint (seed 0): conservative fine-tune vs conservative from scratch.
5. NVE (velocity Verlet, 1 fs, 1 ps, from 300 K) on a 32-atom alloy cell: the conservative
   fine-tune vs the direct fine-tune; and the conservative model's forces against central
   differences of its energy in float64.

    python benchmarks/finetune_transfer.py --out benchmarks/results/finetune_transfer
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt")
#: the pretrained model: small (2 layers, L2-M1, C = 16), cutoff below every fcc shell gap
MODEL = dict(
    name="escn_plugin.eSCN",
    num_layers=2,
    lmax_list=[2],
    mmax_list=[1],
    sphere_channels=16,
    hidden_channels=32,
    edge_channels=16,
    num_sphere_samples=32,
    cutoff=4.6,
    max_neighbors=50,
    otf_graph=True,
    distance_resolution=0.1,
    energy_scale=1.0,
    recompute_node_grid=False,
)


def alloy_structures(n: int, seed: int, cubic_repeat=(2, 1, 1)) -> list:
    """``n`` EMT-labelled binary fcc alloys (energy, forces, stress)."""
    from ase.build import bulk, fcc111
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers, reference_states

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = rng.choice(METALS, 2, replace=False)
        x = rng.uniform(0.2, 0.8)
        lattice = (1 - x) * reference_states[atomic_numbers[a]]["a"] + x * reference_states[
            atomic_numbers[b]
        ]["a"]
        if i % 4 == 3:
            atoms = fcc111(a, (2, 2, 3), a=lattice, vacuum=6.0)
            atoms.pbc = True
        else:
            atoms = bulk(a, "fcc", a=lattice, cubic=True).repeat(cubic_repeat)
            strain = np.eye(3) + rng.normal(scale=0.02, size=(3, 3))
            atoms.set_cell(atoms.cell[:] @ (strain + strain.T) / 2, scale_atoms=True)
        swap = rng.random(len(atoms)) < x
        atoms.numbers[swap] = atomic_numbers[b]
        atoms.rattle(rng.uniform(0.03, 0.12), seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        out.append(atoms)
    return out


def pretrain(work: Path, epochs: int, lr: float) -> tuple[Path, dict]:
    """The direct pretrained checkpoint (cached in ``work``)."""
    from escn_plugin.datasets.oc20_emt import generate
    from escn_plugin.workflows import configs, fairchem_runner

    start = time.perf_counter()
    root = Path(generate(work / "oc20_emt_demo", seed=0, size="demo", workers=1)["root"])
    gen_s = time.perf_counter() - start
    run_dir = work / "pretrain"
    best = list(run_dir.glob("checkpoints/*/best_checkpoint.pt"))
    info = {"data": str(root), "data_seconds": gen_s, "epochs": epochs, "lr": lr}
    if best:
        return best[0], dict(info, train_seconds=None, cached=True)
    config = configs.s2ef_config(root, model=copy.deepcopy(MODEL), epochs=epochs, lr=lr)
    result = fairchem_runner.train(config, run_dir, stream=False)
    val = fairchem_runner.learning_curve(result["log"])["val"]
    info.update(
        train_seconds=result["seconds"],
        cached=False,
        val_forces_mae=val["forces_mae"][-1],
        val_energy_mae=val["energy_mae"][-1],
    )
    return result["best_checkpoint"], info


def finetune(out: Path, start: Path, data: Path, *extra: str) -> dict:
    from escn_plugin.finetune import cli

    report = out / "report.json"
    if not report.is_file():
        args = cli.build_parser().parse_args(
            [
                "--checkpoint",
                str(start),
                "--data",
                str(data),
                "--out",
                str(out),
                "--nve-steps",
                "0",
                *extra,
            ]
        )
        cli.run(args, stream=False)
    return json.loads(report.read_text())


def gradient_check_float64(checkpoint: Path, atoms, h: float = 1e-4) -> dict:
    """Forces of the checkpoint's model in float64 vs central differences of its energy."""
    import torch
    from fairchem.core.common.data_parallel import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    from escn_plugin.finetune.evaluate import calculator

    calc = calculator(checkpoint)
    model = calc.trainer._unwrapped_model.double().eval()
    a2g = AtomsToGraphs(r_energy=False, r_forces=False, r_edges=False, r_pbc=True)

    def run(positions):
        moved = atoms.copy()
        moved.positions = positions
        data = a2g.convert(moved)
        data.pos = torch.tensor(positions, dtype=torch.float64)
        data.cell = torch.tensor(np.asarray(moved.cell[:]), dtype=torch.float64).unsqueeze(0)
        batch = data_list_collater([data], otf_graph=True)
        out = model(batch)
        return float(out["energy"].reshape(())), out["forces"].detach().numpy()

    _, forces = run(atoms.positions.copy())
    worst = 0.0
    for i in range(min(len(atoms), 2)):
        for k in range(3):
            plus, minus = atoms.positions.copy(), atoms.positions.copy()
            plus[i, k] += h
            minus[i, k] -= h
            fd = -(run(plus)[0] - run(minus)[0]) / (2 * h)
            worst = max(worst, abs(fd - forces[i, k]))
    scale = float(np.abs(forces).max())
    return {"max_abs_error": worst, "max_force": scale, "relative": worst / scale, "step": h}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/escn_finetune_bench")
    parser.add_argument("--n", type=int, default=200, help="fine-tuning structures")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--pretrain-lr", type=float, default=1e-2)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (direct)")
    parser.add_argument(
        "--conservative-epochs",
        type=int,
        default=4,
        help="epochs of the conservative runs (a gradient step costs ~3x a direct one)",
    )
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--scratch-lr", type=float, default=1e-2, help="lr of the extra from-scratch run"
    )
    parser.add_argument("--md-steps", type=int, default=1000)
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    import ase.io
    import torch

    torch.set_num_threads(2)
    begin = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start, pre = pretrain(work, args.pretrain_epochs, args.pretrain_lr)
    print("pretrained:", json.dumps(pre), flush=True)
    data = work / "alloys.extxyz"
    if not data.is_file():
        ase.io.write(data, alloy_structures(args.n, seed=123))
    budget = ["--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", "8"]
    results: dict = {"args": vars(args), "pretrain": pre, "direct": {}, "conservative": {}}
    for seed in range(args.seeds):
        rep = finetune(
            work / f"direct_seed{seed}", start, data, *budget, "--seed", str(seed), "--from-scratch"
        )
        results["direct"][seed] = {
            "test": rep["test"],
            "ratios": rep["ratios"],
            "runs": rep["runs"],
        }
        print(f"direct seed {seed}:", json.dumps(rep["ratios"]), flush=True)
    cons_budget = ["--epochs", str(args.conservative_epochs), *budget[2:]]
    rep = finetune(
        work / "conservative_seed0",
        start,
        data,
        *cons_budget,
        "--seed",
        "0",
        "--conservative",
        "--from-scratch",
    )
    results["conservative"] = {"test": rep["test"], "ratios": rep["ratios"], "runs": rep["runs"]}
    print("conservative:", json.dumps(rep["ratios"]), flush=True)

    from escn_plugin.finetune.evaluate import calculator
    from escn_plugin.workflows.md import nve_energy_drift

    cell = alloy_structures(1, seed=999, cubic_repeat=(2, 2, 2))[0]  # 32 atoms, unseen
    cell.calc = None
    models = {
        "conservative fine-tune": results["conservative"]["runs"]["finetune"]["checkpoint"],
        "direct fine-tune": results["direct"][0]["runs"]["finetune"]["checkpoint"],
    }
    results["nve"] = {
        name: nve_energy_drift(cell, calculator(path), steps=args.md_steps, seed=0)
        for name, path in models.items()
    }
    print("nve:", json.dumps(results["nve"]), flush=True)
    results["gradient_check_float64"] = gradient_check_float64(
        Path(models["conservative fine-tune"]), cell
    )
    save(args.out, results, partial=True)
    # the from-scratch baseline at its own (higher) learning rate: a fairer opponent
    scratch_lr = str(args.scratch_lr)
    results["direct_scratch_own_lr"] = {
        "lr": args.scratch_lr,
        "test": scratch_only(
            work / "scratch_own_lr_seed0",
            start,
            data,
            "--epochs",
            str(args.epochs),
            "--lr",
            scratch_lr,
            "--batch-size",
            "8",
        ),
    }
    results["seconds"] = time.perf_counter() - begin
    save(args.out, results)
    return results


def save(out: str | None, results: dict, partial: bool = False) -> None:
    """Write OUT.json (and, complete, OUT.md); partial results after the main stages."""
    if partial:
        results = dict(results, partial=True)
    else:
        results["summary"] = summarize(results)
        text = report(results)
        print(text)
    if out:
        Path(out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        if not partial:
            Path(out).with_suffix(".md").write_text(text)


def scratch_only(out: Path, start: Path, data: Path, *extra: str) -> dict:
    """Test errors of only the from-scratch run of a fine-tune's config (seed 0)."""
    from escn_plugin.finetune import cli, evaluate

    done = out / "scratch_test.json"
    if done.is_file():
        return json.loads(done.read_text())
    args = cli.build_parser().parse_args(
        [
            "--checkpoint",
            str(start),
            "--data",
            str(data),
            "--out",
            str(out),
            "--seed",
            "0",
            "--from-scratch",
            "--prepare-only",
            *extra,
        ]
    )
    settings = cli.prepare(args)
    run = cli._train(out / cli.SCRATCH_DIR, settings, stream=False)
    test = cli._test_structures(out.resolve())
    errors = evaluate.errors(evaluate.predict(run["checkpoint"], test))
    done.write_text(json.dumps(errors))
    return errors


def summarize(results: dict) -> dict:
    ratios = [r["ratios"] for r in results["direct"].values()]
    mean = {k: float(np.mean([r[k] for r in ratios])) for k in ratios[0]}
    cons = results["conservative"]["test"]
    nve = results["nve"]
    drift_c = abs(nve["conservative fine-tune"]["drift_ev_per_atom_ps"])
    drift_d = abs(nve["direct fine-tune"]["drift_ev_per_atom_ps"])
    return {
        "direct_mean_ratios": mean,
        "targets": {
            "force MAE ratio <= 0.6": mean["forces_mae"] <= 0.6,
            "energy MAE ratio <= 0.6": mean["energy_mae"] <= 0.6,
            "conservative fine-tune beats conservative scratch (forces)": cons["finetuned"][
                "forces_mae"
            ]
            < cons["from_scratch"]["forces_mae"],
            "NVE drift <= 1e-4 eV/atom/ps": drift_c <= 1e-4,
            "NVE drift >= 100x below direct": drift_d >= 100 * drift_c,
            "float64 -dE/dx relative error <= 1e-6": results["gradient_check_float64"]["relative"]
            <= 1e-6,
        },
        "drift_ratio_direct_over_conservative": drift_d / drift_c if drift_c else float("inf"),
        "seed0_finetuned_over_scratch_own_lr": {
            k: results["direct"][0]["test"]["finetuned"][k] / v
            for k, v in results.get("direct_scratch_own_lr", {}).get("test", {}).items()
        },
    }


def report(results: dict) -> str:
    keys = ("energy_mae", "energy_per_atom_mae", "forces_mae", "stress_mae")
    pre = results["pretrain"]
    lines = [
        "# Fine-tuning transfer: OC20-EMT (adsorbates on pure metals) -> unseen fcc alloys",
        "",
        f"Pretraining: {pre['epochs']} epochs on OC20-EMT demo (1152 frames), lr "
        f"{pre['lr']}. Fine-tuning: {results['args']['n']} alloy structures (80/10/10 split "
        f"per seed), {results['args']['epochs']} epochs (conservative: "
        f"{results['args']['conservative_epochs']}) of batch 8, lr {results['args']['lr']}, "
        "same steps for fine-tune and from scratch. Test errors via OCPCalculator.",
        "",
        "## Direct (3 seeds)",
        "",
        "| seed | model | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for seed, row in results["direct"].items():
        for name in ("start", "finetuned", "from_scratch"):
            vals = " | ".join(f"{row['test'][name].get(k, float('nan')):.4g}" for k in keys)
            lines.append(f"| {seed} | {name} | {vals} |")
    summary = results["summary"]
    lines += [
        "",
        "Mean ratio fine-tuned / from scratch: "
        + ", ".join(f"{k} {v:.3f}" for k, v in summary["direct_mean_ratios"].items()),
    ]
    own = results.get("direct_scratch_own_lr")
    if own:
        vals = ", ".join(f"{k} {own['test'][k]:.4g}" for k in keys if k in own["test"])
        ratio = ", ".join(
            f"{k} {v:.3f}" for k, v in summary["seed0_finetuned_over_scratch_own_lr"].items()
        )
        lines += [
            "",
            f"From scratch at lr {own['lr']} (seed 0, same steps): {vals}; fine-tuned "
            f"(lr {results['args']['lr']}) / this: {ratio}",
        ]
    cons = results["conservative"]["test"]
    lines += [
        "",
        "## Conservative (seed 0; from the direct pretrained checkpoint)",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name in ("start", "step0", "finetuned", "from_scratch"):
        if name in cons:
            vals = " | ".join(f"{cons[name].get(k, float('nan')):.4g}" for k in keys)
            lines.append(f"| {name} | {vals} |")
    lines += [
        "",
        "## NVE, 32-atom alloy cell, 1 fs, 300 K",
        "",
        "| model | steps | drift (eV/atom/ps) | E_tot std (eV) |",
        "|---|---|---|---|",
    ]
    for name, row in results["nve"].items():
        lines.append(
            f"| {name} | {row['steps']} | {row['drift_ev_per_atom_ps']:.3g} | "
            f"{row['etot_std_ev']:.3g} |"
        )
    g = results["gradient_check_float64"]
    lines += [
        "",
        f"Float64 -dE/dx check: max |F - FD| = {g['max_abs_error']:.3g} eV/A "
        f"({g['relative']:.3g} of the largest force, h = {g['step']})",
        "",
        "## Targets",
        "",
    ]
    for name, ok in summary["targets"].items():
        lines.append(f"- {'met' if ok else 'MISSED'}: {name}")
    lines += [
        "",
        f"Total {results['seconds']:.0f} s (pretraining data generation "
        f"{pre['data_seconds']:.0f} s of it).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
