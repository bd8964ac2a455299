"""Linking detections across frames into tracks: one track = one cell.

Cells flow along +x at a speed set by their lateral position in the channel (fast in the
centre, slow at the walls), and move tens of µm between frames, far more than their own
diameter, so nearest-neighbour linking fails. Instead each track predicts where its cell is
now from its own velocity estimate (a least-squares fit of x against time), or, for a track
seen once, from the flow profile at its y. The flow profile starts as the ideal parabola of
the configured channel and is learned from finished tracks as the run goes.
"""

from ctc_live.tracking.flow import FlowModel
from ctc_live.tracking.tracker import LineFit, Track, Tracker

__all__ = ["FlowModel", "LineFit", "Track", "Tracker"]
