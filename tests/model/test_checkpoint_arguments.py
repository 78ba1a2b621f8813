"""A checkpoint never meets the wrong config silently: the model stores its arguments."""

import logging
import re

import pytest
import torch

import escn_plugin

SMALL = dict(num_layers=1, lmax_list=[1], mmax_list=[1], sphere_channels=4, hidden_channels=4,
             edge_channels=4, num_sphere_samples=8, cutoff=5.0,
             distance_resolution=0.5)  # fmt: skip


def test_arguments_travel_with_the_weights():
    state = escn_plugin.eSCN(**SMALL).state_dict()
    assert state["_extra_state"]["arguments"]["cutoff"] == 5.0
    escn_plugin.eSCN(**SMALL).load_state_dict(state)  # same config: loads


@pytest.mark.parametrize(
    "key, value", [("basis_width_scalar", 2.0), ("cutoff", 6.0), ("resolution", [6, 7])]
)
def test_output_changing_difference_is_an_error_naming_it(key, value):
    state = escn_plugin.eSCN(**SMALL).state_dict()
    other = escn_plugin.eSCN(**{**SMALL, key: value})
    with pytest.raises(ValueError, match=rf"{key}: checkpoint .*, config {re.escape(repr(value))}"):
        other.load_state_dict(state)


def test_neutral_difference_is_a_note(caplog):
    state = escn_plugin.eSCN(**SMALL).state_dict()
    other = escn_plugin.eSCN(**{**SMALL, "validate_inputs": False})
    with caplog.at_level(logging.INFO):
        other.load_state_dict(state)
    assert "validate_inputs: checkpoint True, config False" in caplog.text
    for name, p in other.named_parameters():
        torch.testing.assert_close(p, state[name])


def test_checkpoint_without_arguments_loads_with_a_warning(caplog):
    state = escn_plugin.eSCN(**SMALL).state_dict()
    del state["_extra_state"]
    with caplog.at_level(logging.WARNING):
        escn_plugin.eSCN(**{**SMALL, "basis_width_scalar": 3.0}).load_state_dict(state)
    assert "stores no model arguments" in caplog.text
