"""The command line refuses what it cannot do, saying why, before any work."""

from __future__ import annotations

import pytest

from escn_plugin.finetune import cli


def run(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_argument_errors(tmp_path, capsys, extxyz, plugin_checkpoint):
    out = str(tmp_path / "out")
    assert "holds no fine-tune" in run(capsys, "--out", out, "--resume")
    assert "--checkpoint is required" in run(capsys, "--data", str(extxyz), "--out", out)
    both = run(
        capsys,
        "--checkpoint",
        str(plugin_checkpoint),
        "--data",
        str(extxyz),
        "--train",
        str(extxyz),
        "--out",
        out,
    )
    assert "either --data" in both
    assert "--train needs --val and --test" in run(
        capsys, "--checkpoint", str(plugin_checkpoint), "--train", str(extxyz), "--out", out
    )
    assert "--epochs must be at least 1" in run(
        capsys,
        "--checkpoint",
        str(plugin_checkpoint),
        "--data",
        str(extxyz),
        "--out",
        out,
        "--epochs",
        "0",
    )


def test_bad_inputs_fail_before_any_training(tmp_path, capsys, extxyz, plugin_checkpoint):
    code = cli.main(
        [
            "--checkpoint",
            str(tmp_path / "missing.pt"),
            "--data",
            str(extxyz),
            "--out",
            str(tmp_path / "a"),
            "--prepare-only",
        ]
    )
    assert code == 2 and "missing.pt: no such checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "a" / "data").exists()
    code = cli.main(
        [
            "--checkpoint",
            str(plugin_checkpoint),
            "--data",
            str(extxyz),
            "--stress",
            "--no-stress",
            "--out",
            str(tmp_path / "b"),
            "--prepare-only",
        ]
    )
    assert code == 0  # the last of --stress / --no-stress wins, as argparse does
