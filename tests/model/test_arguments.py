"""The argument table is the one source of truth: constructor, checks and README agree."""

import inspect
import re
from pathlib import Path

import pytest

import escn_plugin
from escn_plugin.model import arguments, escn

README = Path(__file__).resolve().parents[2] / "README.md"


def test_table_matches_constructor_signature():
    params = inspect.signature(escn.eSCNBackbone.__init__).parameters
    signature = {n: p.default for n, p in params.items() if n != "self"}
    table = {a.name: a.default for a in arguments.ARGUMENTS}
    assert table == signature
    model = inspect.signature(escn.eSCN.__init__).parameters
    assert {a.name: a.default for a in arguments.MODEL_ARGUMENTS} == {
        "energy_scale": model["energy_scale"].default
    }


def test_distance_functions_agree():
    assert set(arguments.DISTANCE_FUNCTIONS) == set(escn.DISTANCE_FUNCTIONS)


def test_readme_table_is_generated_from_the_table():
    text = README.read_text()
    block = re.search(r"<!-- arguments:begin -->\n(.*?)\n<!-- arguments:end -->", text, re.S)
    assert block is not None, "README.md lacks the arguments block"
    # regenerate with: python scripts/update_readme_arguments.py
    expected = arguments.markdown_table(arguments.ARGUMENTS + arguments.MODEL_ARGUMENTS)
    assert block.group(1).strip() == expected


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"regress_stress": True}, "needs direct_forces: False"),
        ({"compile_layers": True, "direct_forces": False}, "compile_layers"),
        ({"envelope_exponent": 0}, "envelope_exponent"),
        ({"so2_impl": "nope"}, "so2_impl"),
        ({"rotation_backend": "nope"}, "rotation_backend"),
        ({"lmax_list": [2, 3], "mmax_list": [1]}, "same length"),
        ({"lmax_list": [2], "mmax_list": [3]}, "must not exceed"),
        ({"num_layers": 0}, "num_layers"),
        ({"direct_forces": "yes"}, "direct_forces"),
    ],
)
def test_bad_arguments_name_the_key(overrides, match):
    config = {"num_layers": 1, "lmax_list": [1], "mmax_list": [1], "sphere_channels": 4}
    with pytest.raises(ValueError, match=match):
        escn_plugin.eSCN(**{**config, **overrides})


def test_num_layers_on_a_built_model_is_checked():
    model = escn_plugin.eSCN(num_layers=2, lmax_list=[1], mmax_list=[1], sphere_channels=4)
    model.num_layers = 1
    assert model.num_layers == 1
    with pytest.raises(ValueError, match="built with 2 layers"):
        model.num_layers = 3
