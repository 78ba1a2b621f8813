"""eSCN's building blocks: edge features, message passing, node update, output heads."""

from escn_plugin.nn.edge_features import EdgeFeatures
from escn_plugin.nn.layer import InteractionLayer
from escn_plugin.nn.message import MessageBlock
from escn_plugin.nn.node_update import NodeUpdate
from escn_plugin.nn.readout import EnergyReadout, ForceReadout

__all__ = [
    "EdgeFeatures",
    "EnergyReadout",
    "ForceReadout",
    "InteractionLayer",
    "MessageBlock",
    "NodeUpdate",
]
