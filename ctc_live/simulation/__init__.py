"""The simulated flow of cells and its bright-field (and fluorescence) rendering."""

from ctc_live.simulation.scene import Cell, FlowScene

__all__ = ["Cell", "FlowScene"]
