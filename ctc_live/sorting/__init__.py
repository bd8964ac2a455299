"""Sorting trigger: the sorter controller's protocol, its emulator and the host driver."""

from ctc_live.sorting.emulator import PulseLogEntry, SorterEmulator
from ctc_live.sorting.link import PulseOutcome, SorterLink, open_sorter

__all__ = ["PulseLogEntry", "PulseOutcome", "SorterEmulator", "SorterLink", "open_sorter"]
