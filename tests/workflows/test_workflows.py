"""fairchem workflows beyond train/validate/predict, on the tiny OC20-EMT data with one tiny
trained checkpoint: submission files, ``--mode run-relaxations`` and our IS2RE/IS2RS
metrics, fairchem's ``OCPCalculator`` in an ASE relaxation, ``--submit`` (submitit, with a
fake ``sbatch``: no SLURM here) and two-rank ``--num-gpus 2 --cpu`` training. About 1.5 min
on 2 idle cores.

The pieces under test are the main job's steps in :mod:`escn_plugin.workflows`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from escn_plugin.datasets.oc20_emt import generate, read_lmdb, write_lmdb
from escn_plugin.workflows.configs import s2ef_config
from escn_plugin.workflows.data import load_metadata
from escn_plugin.workflows.element_references import composition, fit_element_references
from escn_plugin.workflows.equivariance import rotation_error
from escn_plugin.workflows.fairchem_runner import (
    RelaxationProgress,
    fairchem_command,
    fairchem_relaxation_log,
    learning_curve,
    predict,
    relaxation_steps_taken,
    run_fairchem,
    run_relaxations,
    train,
)
from escn_plugin.workflows.relaxation_metrics import is2rs_metrics, relaxation_metrics
from escn_plugin.workflows.relaxations import (
    model_energies,
    read_relaxed_positions,
    trajectory_check,
    trajectory_last_frames,
)
from escn_plugin.workflows.s2ef_metrics import s2ef_metrics
from escn_plugin.workflows.submission import (
    OC20_SPLITS,
    SUBMISSION_FIELDS,
    check_submission,
    make_submission,
)
from tests.helpers.fairchem_run import SMALL_MODEL

#: a micro eSCN: seconds per epoch on the tiny data
MICRO_MODEL = dict(SMALL_MODEL, name="escn_plugin.eSCN")


def _config(data_root, refs, epochs=2):
    return s2ef_config(
        data_root, model=MICRO_MODEL, epochs=epochs, batch_size=4, element_references=refs
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("oc20_emt_tiny")
    generate(root, seed=0, size="tiny", verbose=False)
    return root


@pytest.fixture(scope="module")
def refs(data_root):
    return fit_element_references(data_root, data_root / "element_references.npz")


@pytest.fixture(scope="module")
def trained(data_root, refs, tmp_path_factory):
    """One tiny checkpoint shared by every test (2 epochs, 6 steps), trained on top of
    linear element references: best_checkpoint.pt, EMA weights in place, as the"""
    config = _config(data_root, refs)
    result = train(config, tmp_path_factory.mktemp("train"), stream=False)
    assert result["checkpoint"].is_file(), result["log"][-3000:]
    assert result["best_checkpoint"].is_file(), result["log"][-3000:]
    return config, result["best_checkpoint"]


@pytest.fixture(scope="module")
def amplified(trained, tmp_path_factory):
    """The tiny checkpoint with its force normalizer scaled up 1e4 times.

    A 6-step eSCN still predicts forces of ~1e-5 eV/A (its pair embeddings start in
    +-0.001): every relaxation would "converge" at step 0 (fairchem then writes no
    trajectory frame), and fmax 0 makes fairchem's L-BFGS divide by ~0 (NaN positions).
    Scaled, the forces are ~0.1 eV/A and the optimisers take real steps."""
    state = torch.load(trained[1], map_location="cpu", weights_only=False)
    state["normalizers"]["forces"]["rmsd"] *= 1e4
    path = tmp_path_factory.mktemp("amplified") / "amplified_forces.pt"
    torch.save(state, path)
    return path


def _submission_args(dataset, out_path, files, is2re_relaxations=False):
    """``make_submission_file``'s argparse namespace (its parser lives under __main__)."""
    ns = dict.fromkeys(("id", "ood_ads", "ood_cat", "ood_both", "ood"))
    ns.update(files)
    return argparse.Namespace(
        **ns,
        out_path=str(out_path),
        dataset=dataset,
        is2re_relaxations=is2re_relaxations,
        hybrid=False,
    )


# --------------------------------------------------------------------------------------
# element references
# --------------------------------------------------------------------------------------


def test_element_references_are_fairchems_linear_references(data_root, refs):
    from fairchem.core.datasets import data_list_collater
    from fairchem.core.modules.normalization.element_references import (
        create_element_references,
    )

    linref = create_element_references(file=refs["file"])
    records = read_lmdb(data_root / "s2ef" / "train" / "data.lmdb")
    batch = data_list_collater(records, otf_graph=True)
    energies = torch.tensor([float(d.y) for d in records], dtype=torch.float64)
    # fairchem subtracts sum_i coeff[Z_i] from each system's energy
    residual = linref.dereference(energies.clone(), batch, reshaped=False).numpy()
    assert residual.mean() == pytest.approx(refs["residual_mean"], abs=1e-9)
    assert residual.std() == pytest.approx(refs["residual_std"], rel=1e-9)
    assert np.abs(residual).mean() == pytest.approx(refs["mae"]["train"], rel=1e-9)
    # least squares with an intercept-free linear model: residuals orthogonal to the counts
    counts = composition(records)
    assert np.abs(counts.T @ residual).max() < 1e-6 * np.abs(counts.T @ energies.numpy()).max()


# --------------------------------------------------------------------------------------
# submission files
# --------------------------------------------------------------------------------------


def test_predict_and_s2ef_submission_file(data_root, trained, tmp_path):
    config, checkpoint = trained
    test_src = data_root / "s2ef" / "test"
    pred = predict(config, checkpoint, test_src, tmp_path / "predict", stream=False)

    metrics = s2ef_metrics(pred, test_src)
    assert metrics["n_frames"] == 6
    assert np.isfinite([metrics["energy_mae"], metrics["forces_mae"]]).all()
    assert metrics["forces_pred"].shape == metrics["forces_true"].shape

    # the stock CLI, the one test split standing in for all four OC20 test splits
    sub = make_submission(pred, tmp_path / "s2ef_submission", stream=False)
    assert sub.name == "s2ef_submission.npz"  # make_submission_file appends .npz
    shapes = check_submission(sub)
    assert set(shapes) == {f"{s}_{f}" for s in OC20_SPLITS for f in SUBMISSION_FIELDS}
    with np.load(sub) as npz, np.load(pred) as p:
        assert len(npz["id_ids"]) == 6 and npz["ood_both_forces"].shape == p["forces"].shape
        np.testing.assert_array_equal(npz["ood_cat_energy"], p["energy"])

    # OC22 takes two splits (id, ood); same script, in process
    from fairchem.core.scripts.make_submission_file import main as make_submission_main

    make_submission_main(_submission_args("OC22", tmp_path / "oc22", {"id": pred, "ood": pred}))
    check_submission(tmp_path / "oc22.npz", splits=("id", "ood"))

    with pytest.raises(ValueError, match="lacks"):
        check_submission(tmp_path / "oc22.npz")  # no ood_ads etc.


# --------------------------------------------------------------------------------------
# relaxations and the IS2RE / IS2RS metrics
# --------------------------------------------------------------------------------------


def test_run_relaxations_writes_positions_and_metrics_are_finite(
    data_root, trained, amplified, tmp_path
):
    config, checkpoint = trained[0], amplified
    relax_src = data_root / "is2re" / "train" / "data.lmdb"  # 2 systems
    out = run_relaxations(
        config, checkpoint, relax_src, tmp_path / "relax", steps=4, fmax=1e-3, stream=False
    )
    assert relaxation_steps_taken(out["log"]) == 4
    records = read_lmdb(relax_src)
    with np.load(out["relaxed_positions"]) as npz:
        assert sorted(npz["ids"].tolist()) == sorted(str(int(d.sid)) for d in records)
        assert npz["pos"].shape == (sum(int(d.natoms) for d in records), 3)
        assert len(npz["chunk_idx"]) == len(records) - 1
    assert len(list(out["traj_dir"].glob("*.traj"))) == len(records)

    positions = read_relaxed_positions(out["relaxed_positions"])
    energies = model_energies(checkpoint, relax_src, positions)
    metrics = relaxation_metrics(out["relaxed_positions"], relax_src, energies, 6.0)
    assert metrics["n_systems"] == 2
    values = [metrics["is2re_energy_mae"], metrics["is2re_ewt"], metrics["is2re_baseline_mae"]]
    for key in ("is2rs", "initial_as_relaxed"):
        values += [metrics[key]["adwt"], metrics[key]["mean_distance"]]
    assert np.isfinite(values).all()
    assert 0 <= metrics["is2rs"]["adwt"] <= 1

    # full trajectories (5 frames: steps 0-4); every system ran all steps, so each ends on
    # its final structure, whose energy is the model's (OCPCalculator) energy there
    check = trajectory_check(out["traj_dir"], out["relaxed_positions"])
    assert check["stale"] == []
    for sid, energy in check["energies"].items():
        assert energy == pytest.approx(energies[sid], abs=1e-4)

    # our ADwT is fairchem's: the value its evaluator logged after the val-style relaxation
    logged = fairchem_relaxation_log(out["log"])
    adwt = logged["positions_average_distance_within_threshold"]
    assert adwt == pytest.approx(metrics["is2rs"]["adwt"], abs=1e-9), out["log"][-2000:]

    # IS2RS / IS2RE-by-relaxation submission files from these outputs
    from fairchem.core.scripts.make_submission_file import main as make_submission_main

    files = dict.fromkeys(OC20_SPLITS, str(out["relaxed_positions"]))
    make_submission_main(_submission_args("OC20", tmp_path / "is2rs", files))
    check_submission(tmp_path / "is2rs.npz", fields=("ids", "pos", "chunk_idx"))
    files = dict.fromkeys(OC20_SPLITS, str(out["traj_dir"]))
    make_submission_main(_submission_args("OC20", tmp_path / "is2re", files, True))
    check_submission(tmp_path / "is2re.npz", fields=("ids", "energy"))


def test_is2rs_metrics_hand_made_case():
    cell = np.diag([10.0, 10.0, 30.0])
    true = np.array([[0.05, 5.0, 5.0], [5.0, 5.0, 5.0], [2.0, 2.0, 2.0], [9.0, 9.0, 9.0]])
    free = np.array([True, True, True, False])
    # structure 1 exact except a periodic image; the fixed atom's error is ignored
    exact = true + np.array([[10.0, 0, 0], [0, 0, 0], [0, -10.0, 0], [3.0, 0, 0]])
    # structure 2: free atoms off by 0.1, 0.2, 0.3 A (the first across the x boundary)
    shifted = true + np.array([[-0.1, 0, 0], [0, 0.2, 0], [0, 0, 0.3], [0, 0, 0]])
    shifted[0, 0] += 10.0  # wrapped: x = 9.95
    m = is2rs_metrics([exact, shifted], [true, true], [cell, cell], [free, free])
    assert m["n_systems"] == 2
    assert m["mean_distance"] == pytest.approx((0.0 + 0.2) / 2)
    assert m["positions_mae"] == pytest.approx((0.1 + 0.2 + 0.3) / 18)
    assert m["dwt_0.1"] == 0.5
    # ADwT: thresholds 0.010, 0.011, ... 0.499 (490); d=0 is below all of them, d=0.2 below
    # those above 0.2 (0.201 .. 0.499, 299 of them); allow one threshold for rounding
    assert m["adwt"] == pytest.approx((490 + 299) / 980, abs=1.5 / 980)


def test_relaxation_metrics_hand_made_files(tmp_path):
    """relaxation_metrics on hand-written relaxed_positions.npz, trajectories and LMDB."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import Trajectory
    from torch_geometric.data import Data

    cell = np.diag([8.0, 8.0, 20.0]).astype(np.float32)
    rng = np.random.default_rng(0)
    records, relaxed, energies = [], [], {}
    for sid, (offset, e_pred, e_true) in enumerate([(0.0, 1.0, 1.0), (0.05, 2.5, 2.0)]):
        pos = rng.uniform(0, 8, size=(3, 3)).astype(np.float32)
        pos_relaxed = pos + 0.3
        records.append(
            Data(
                pos=torch.tensor(pos), cell=torch.tensor(cell)[None],
                atomic_numbers=torch.tensor([29, 29, 8]), natoms=3, sid=sid + 10,
                fixed=torch.tensor([1, 0, 0], dtype=torch.int32), tags=torch.tensor([0, 1, 2]),
                y_init=0.0, y_relaxed=e_true, pos_relaxed=torch.tensor(pos_relaxed),
            )
        )  # fmt: skip
        relaxed.append(pos_relaxed + np.array([offset, 0, 0]))
        energies[sid + 10] = e_pred
    src = write_lmdb(tmp_path / "relax" / "data.lmdb", records)
    np.savez(
        tmp_path / "relaxed_positions.npz",
        ids=np.array(["11", "10"]),  # order differs from the LMDB's
        pos=np.concatenate([relaxed[1], relaxed[0]]),
        chunk_idx=np.array([3]),
    )
    traj_dir = tmp_path / "traj"
    traj_dir.mkdir()
    for sid, e in energies.items():
        with Trajectory(traj_dir / f"{sid}.traj", "w") as traj:
            for energy in (e + 1.0, e):  # first and last frame
                atoms = Atoms("Cu2O", positions=np.zeros((3, 3)), cell=cell, pbc=True)
                atoms.calc = SinglePointCalculator(atoms, energy=energy)
                traj.write(atoms)

    npz = tmp_path / "relaxed_positions.npz"
    check = trajectory_check(traj_dir, npz)
    assert check["energies"] == {"10": 1.0, "11": 2.5}
    assert check["stale"] == ["10", "11"]  # the frames' positions are not the relaxed ones
    m = relaxation_metrics(npz, src, check["energies"], 1.0)
    assert m["is2re_energy_mae"] == pytest.approx(0.25)
    assert m["is2re_ewt"] == 0.5
    assert m["is2re_baseline_mae"] == pytest.approx(0.5)
    assert m["is2rs"]["mean_distance"] == pytest.approx(0.025, abs=1e-6)
    assert m["initial_as_relaxed"]["mean_distance"] == pytest.approx(0.3 * np.sqrt(3), rel=1e-5)
    assert m["initial_as_relaxed"]["adwt"] == 0.0  # 0.52 A is beyond every threshold

    # an empty trajectory (a system converged at step 0) has no last frame
    Trajectory(traj_dir / "10.traj", "w").close()
    assert trajectory_last_frames(traj_dir)["10"] is None
    check = trajectory_check(traj_dir, npz)
    assert check["energies"]["10"] is None and "10" in check["stale"]


# --------------------------------------------------------------------------------------
# OCPCalculator
# --------------------------------------------------------------------------------------


def test_ocp_calculator_relaxes_slab_with_adsorbate(amplified):
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms
    from ase.optimize import LBFGS
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    calc = OCPCalculator(checkpoint_path=str(amplified), cpu=True, seed=0)
    assert type(calc.trainer._unwrapped_model).__module__ == "escn_plugin.model.escn"

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=8.0, orthogonal=True)
    slab.pbc = True
    add_adsorbate(slab, "O", 1.8, "fcc")
    tags = np.where(slab.positions[:, 2] > slab.positions[:12, 2].max() - 0.5, 1, 0)
    tags[-1] = 2
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    slab.rotate(17.0, "z", rotate_cell=True)  # no edges along special directions
    slab.calc = calc

    energies = []
    opt = LBFGS(slab, maxstep=0.05, logfile=None)
    opt.attach(lambda: energies.append(slab.get_potential_energy()))
    opt.run(fmax=1e-3, steps=3)
    forces = slab.get_forces()
    assert opt.nsteps == 3 and len(energies) == 4 and np.isfinite(energies).all()
    assert forces.shape == (len(slab), 3) and np.isfinite(forces).all()
    assert np.abs(forces[tags == 0]).max() == 0  # FixAtoms zeroes the fixed atoms' forces


# --------------------------------------------------------------------------------------
# --submit (submitit)
# --------------------------------------------------------------------------------------


def _fake_slurm_bin(path):
    """``srun`` (makes submitit's AutoExecutor choose SLURM) and ``sbatch`` (prints a job
    id, records its arguments) on PATH; nothing is submitted anywhere."""
    path.mkdir()
    (path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (path / "sbatch").write_text(
        f'#!/bin/sh\necho "$@" >> {path}/sbatch_calls.txt\necho "Submitted batch job 4242"\n'
    )
    for name in ("srun", "sbatch"):
        (path / name).chmod(0o755)
    return path


def test_submit_builds_slurm_job_with_our_config(data_root, refs, tmp_path):
    import yaml

    bin_dir = _fake_slurm_bin(tmp_path / "bin")
    config = _config(data_root, refs, epochs=1)
    config["slurm"] = {"constraint": "volta32gb"}  # extra sbatch parameters
    config_path = tmp_path / "train.yml"
    config_path.write_text(yaml.safe_dump(config))
    cmd = [
        *fairchem_command(), "--mode", "train", "--config-yml", str(config_path),
        "--cpu", "--submit", "--run-dir", str(tmp_path / "run"), "--logdir",
        str(tmp_path / "logs"), "--identifier", "escn-submit", "--num-gpus", "2",
        "--num-nodes", "1", "--slurm-partition", "debugq", "--slurm-account", "acct",
        "--slurm-qos", "high", "--slurm-mem", "16", "--slurm-timeout", "2",
    ]  # fmt: skip
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Submitted jobs: 4242" in proc.stderr + proc.stdout

    # the sbatch script fairchem's AutoExecutor wrote
    job_dir = tmp_path / "logs" / "4242"
    script = (job_dir / "4242_submission.sh").read_text()
    for line in (
        "--job-name=escn-submit", "--partition=debugq", "--account=acct", "--qos=high",
        "--mem=16GB", "--time=120", "--gpus-per-node=2", "--ntasks-per-node=2",
        "--nodes=1", "--cpus-per-task=1", "--constraint=volta32gb",
    ):  # fmt: skip
        assert f"#SBATCH {line}\n" in script, script
    assert "-m submitit.core._submit" in script
    assert (bin_dir / "sbatch_calls.txt").read_text().strip().endswith(".sh")
    assert list((tmp_path / "logs" / "exp").glob("*.log"))  # fairchem's experiment log

    # the pickled job round-trips in a fresh interpreter: a stock Runner and our config,
    # whose model name resolves to this plugin; then it runs there (as a single local
    # process: the SLURM branch of fairchem's distutils.setup needs CUDA and NCCL)
    check = textwrap.dedent(
        f"""
        import pickle, sys
        from fairchem.core._cli import Runner
        from fairchem.core.common import distutils
        from fairchem.core.common.registry import registry
        with open({str(job_dir / "4242_submitted.pkl")!r}, "rb") as f:
            job = pickle.load(f)
        assert type(job.function) is Runner, job.function
        config = job.args[0]
        assert config["submit"] and config["world_size"] == 2, config
        assert config["model"]["name"] == "escn_plugin.eSCN"
        assert config["slurm"]["partition"] == "debugq"
        assert config["slurm"]["additional_parameters"] == {{"constraint": "volta32gb"}}
        cls = registry.get_model_class(config["model"]["name"])
        assert cls.__module__ == "escn_plugin.model.escn", cls
        config.update(submit=False, world_size=1)
        distutils.setup_env_local()
        job.function(config)
        print("RAN", job.function.trainer.step)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "RAN 3" in proc.stdout  # 1 epoch of 12 frames in batches of 4
    assert list((tmp_path / "run" / "checkpoints").glob("*/checkpoint.pt"))


# --------------------------------------------------------------------------------------
# two ranks
# --------------------------------------------------------------------------------------


def test_two_rank_cpu_training(data_root, refs, tmp_path):
    """``--num-gpus 2 --cpu``: elastic_launch starts two gloo ranks; DDP has no
    find_unused_parameters, so this fails if any parameter gets no gradient. (~25 s on
    2 idle cores: not marked slow.)"""
    config = _config(data_root, refs, epochs=1)
    log = run_fairchem(config, tmp_path, "train", "--num-gpus", "2", stream=False)
    assert "Running in local mode with 2 ranks" in log
    assert "unused parameters" not in log.lower() and "Traceback" not in log
    state = torch.load(
        next(tmp_path.glob("checkpoints/*/checkpoint.pt")), map_location="cpu",
        weights_only=False,
    )  # fmt: skip
    # 12 frames over 2 ranks in batches of 4 per rank: 2 steps per epoch (1 rank: 3)
    assert state["step"] == 2


# --------------------------------------------------------------------------------------
# report pieces: learning curve, relaxation progress, rotation error
# --------------------------------------------------------------------------------------

_TRAIN_LOG = """\
2026-11-29 02:49:34 .../ocp_trainer.py:194: (INFO): energy_mae: 3.02e-01, forces_mae: \
2.90e-01, forces_cosine_similarity: 6.36e-02, loss: 1.71e+01, lr: 1.00e-02, epoch: \
6.94e-02, step: 1.00e+01
2026-11-29 02:49:54 .../ocp_trainer.py:194: (INFO): energy_mae: 2.00e-01, forces_mae: \
1.50e-01, forces_cosine_similarity: 3.0e-01, loss: 9.00e+00, lr: 9.9e-03, epoch: \
1.00e+00, step: 2.00e+01
2026-11-29 02:49:55 .../base_trainer.py:863: (INFO): Evaluating on val.
device 0: 100%|##########| 12/12 [00:03<00:00,  3.49it/s]
2026-11-29 02:49:59 .../base_trainer.py:905: (INFO): energy_mae: 0.2500, forces_mae: \
0.1400, forces_cosine_similarity: 0.3100, loss: 8.5000, epoch: 1.0000
"""


def test_run_fairchem_puts_the_config_seed_on_the_command_line(tmp_path, monkeypatch):
    """fairchem 1.10 overwrites ``config["seed"]`` with ``--seed`` (default 0): the seed
    must travel on the command line or every run trains with seed 0."""
    commands = []

    class FakeProcess:
        def __init__(self, cmd, **kwargs):
            commands.append(cmd)
            self.stdout = iter(["done\n"])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    assert run_fairchem({"seed": 7}, tmp_path, "train", stream=False) == "done\n"
    assert run_fairchem({}, tmp_path, "validate", stream=False) == "done\n"
    seeds = [cmd[cmd.index("--seed") + 1] for cmd in commands]
    assert seeds == ["7", "0"]


def test_s2ef_config_validates_the_last_step(data_root):
    """Validation every ``eval_every_epochs`` epochs when that divides ``epochs``, else
    every epoch (fairchem's default, which counts the real loader, so it also holds with
    several ranks): fairchem validates when ``step % eval_every == 0``, so the final
    weights are always validated (and can become ``best_checkpoint.pt``)."""
    n_frames = load_metadata(data_root)["s2ef"]["train"]["n_frames"]
    per_epoch = -(-n_frames // 4)
    for epochs, every, expected in ((10, 2, 2), (6, 3, 3), (9, 2, 1), (4, 3, 1), (1, 2, 1)):
        optim = s2ef_config(data_root, epochs=epochs, batch_size=4, eval_every_epochs=every)[
            "optim"
        ]
        assert optim["T_max"] == epochs * per_epoch
        assert optim.get("eval_every", per_epoch) == expected * per_epoch
        assert ("eval_every" in optim) == (expected > 1)


def test_learning_curve_from_a_fairchem_log():
    # fairchem writes each of these on one line
    log = _TRAIN_LOG.replace("\\\n", "")
    curve = learning_curve(log)
    assert curve["train"]["step"] == [10.0, 20.0]
    assert curve["train"]["energy_mae"] == [0.302, 0.2]
    assert curve["train"]["loss"] == [17.1, 9.0]
    assert curve["val"] == {
        "step": [20.0], "loss": [8.5], "energy_mae": [0.25], "forces_mae": [0.14]
    }  # fmt: skip


def test_relaxation_progress_lines():
    show = RelaxationProgress(n_batches=2, steps=20, every=10)
    lbfgs = ".../lbfgs_torch.py:97: (INFO): {} 0.500 0.250"
    shown = [show(lbfgs.format(step)) for step in (0, 5, 10, 0, 10, 20)]
    assert shown[1] is None and shown[0].startswith("relaxations [")
    assert "batch 1/2, step 10/20, largest per-system fmax 0.500" in shown[2]
    assert "batch 2/2, step 0/20" in shown[3] and "batch 2/2, step 20/20" in shown[5]
    assert "#" * 20 in shown[5]
    assert show("other line\n") == "other line"


def test_rotation_error_measures_equivariance(data_root):
    """EMT is exactly rotation equivariant; EMT plus a constant force along x is not."""
    from ase.calculators.emt import EMT

    records = read_lmdb(data_root / "is2re" / "train" / "data.lmdb")
    exact = rotation_error(None, records, n_rotations=2, seed=0, calculator=EMT())
    assert exact["n_structures"] == 2 and exact["n_rotations"] == 2
    assert exact["force_error_max"] < 1e-9 and exact["energy_error_max"] < 1e-9

    class FieldEMT(EMT):
        """EMT plus a constant 0.1 eV/A force along x on every atom (not equivariant)."""

        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results["forces"] = self.results["forces"] + np.array([0.1, 0.0, 0.0])

    biased = rotation_error(None, records, n_rotations=2, seed=0, calculator=FieldEMT())
    assert biased["force_error_max"] > 1e-2


def test_nve_drift_through_the_checkpoint(data_root, trained):
    """The report's NVE step: the checkpoint through OCPCalculator and EMT beside it, from
    the relaxed structure of an IS2RS record (sub-surface atoms fixed)."""
    from escn_plugin.workflows.md import nve_drift

    record = read_lmdb(data_root / "is2re" / "test" / "data.lmdb")[0]
    result = nve_drift(trained[1], record, steps=4, seed=0)
    assert result["system"] == f"sid {int(record.sid)}"
    for key in ("model", "emt"):
        assert result[key]["natoms"] == int(record.natoms) and result[key]["steps"] == 4
        assert all(np.isfinite(v) for v in result[key].values())
    assert result["model"]["drift_ev_per_atom_ps"] != result["emt"]["drift_ev_per_atom_ps"]
