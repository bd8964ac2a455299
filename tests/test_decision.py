"""The per-cell decision rule and the pulse plan, apart from threads."""

import math
import time

import numpy as np
import pytest

from ctc_live.config import Config, SorterConfig
from ctc_live.pipeline.decision import Evidence, classify, combine, plan_pulse
from ctc_live.tracking import LineFit


class RecordingSorter:
    """The sorter driver's ``fire``, recording the pulses it is given."""

    def __init__(self):
        self.pulses = []

    def fire(self, target_ns, width_us):
        self.pulses.append((target_ns, width_us))
        return len(self.pulses)


def test_combine_is_mean_log_odds():
    assert combine([0.9]) == pytest.approx(0.9)
    # Two opposite crops of equal confidence cancel; more agreeing crops do not sharpen.
    assert combine([0.9, 0.1]) == pytest.approx(0.5)
    assert combine([0.8, 0.8, 0.8]) == pytest.approx(0.8)
    # One absurdly confident crop cannot outvote many: scores are clipped.
    assert combine([1.0] + [0.1] * 9) < 0.5


def test_classify_band_around_threshold():
    assert classify(0.9, 0.5, 0.15) == "ctc"
    assert classify(0.1, 0.5, 0.15) == "wbc"
    assert classify(0.6, 0.5, 0.15) == "uncertain"
    assert classify(None, 0.5, 0.15) == "uncertain"
    assert classify(0.6, 0.4, 0.15) == "ctc"  # the threshold moves the band


def evidence(scores, crops, frozen=None, dropped=()):
    ev = Evidence(1, first_frame=0, crops=crops, scores=list(scores), frozen_crops=frozen)
    ev.dropped = list(dropped)
    return ev


def test_early_decision_uses_exactly_the_first_crops():
    # Confident after 3 crops: decide on those 3, whatever arrived after.
    ev = evidence([0.95, 0.9, 0.97, 0.2], crops=6)
    assert ev.evidence_for_decision(3, 0.5, 0.15) == [0.95, 0.9, 0.97]
    # Not confident after 3 and still in the field: wait.
    assert evidence([0.9, 0.2, 0.5, 0.9], crops=6).evidence_for_decision(3, 0.5, 0.15) is None


def test_leaving_cell_waits_for_the_crops_sent_before_it_left():
    ev = evidence([0.9, 0.2], crops=4, frozen=3)
    assert ev.evidence_for_decision(3, 0.5, 0.15) is None
    ev.scores.append(0.4)
    ev.scores.append(0.99)  # a crop after the freeze does not count
    assert ev.evidence_for_decision(3, 0.5, 0.15) == [0.9, 0.2, 0.4]


def test_dropped_crops_are_not_waited_for():
    ev = evidence([0.1, 0.2], crops=3, frozen=3, dropped=[1])
    assert ev.evidence_for_decision(3, 0.5, 0.15) == [0.1, 0.2]


def line(velocity=5000.0, n=10, sigma_um=0.3, span_s=0.05):
    """A track's line: n observations over span_s, ending at camera time 1.0 s at x=300 µm."""
    t = np.linspace(1.0 - span_s, 1.0, n)
    t0 = float(t.mean())
    return LineFit(t0, 300.0 - velocity * (1.0 - t0), velocity, n,
                   float(((t - t0) ** 2).sum()), sigma_um)


def test_pulse_is_centred_on_the_predicted_crossing():
    sorter = SorterConfig(sort_distance_um=1500, pulse_margin_us=100, pulse_margin_um=0.2,
                          pulse_sigmas=2.5, pulse_max_half_um=100, min_pulse_us=100,
                          widen_sigmas=2.5, widen_max_half_um=100)  # widening off
    fit = line()
    start_ns, width_us = plan_pulse(fit, False, camera_time_s=1.0, exposure_ns=10**9,
                                    sorter=sorter)
    crossing_ns = 10**9 + (1500 - 300) / 5000 * 1e9
    assert start_ns + width_us * 500 == pytest.approx(crossing_ns, abs=1)
    half_um = 100e-6 * 5000 + 0.2 + 2.5 * fit.x_sigma(fit.t_at(1500))
    assert width_us == pytest.approx(2 * half_um / 5000 * 1e6)


def test_a_trusted_line_gets_the_margins_alone():
    sorter = SorterConfig(pulse_margin_us=100, pulse_margin_um=0.2, min_pulse_us=1)
    _, width_us = plan_pulse(line(n=12, span_s=0.06, sigma_um=1.0), True, 1.0, 0, sorter)
    assert width_us == pytest.approx(2 * (100e-6 * 5000 + 0.2) / 5000 * 1e6)


def test_an_untrusted_pulse_covers_the_uncertainty_of_the_track_line():
    sorter = SorterConfig(min_pulse_us=1, max_pulse_us=20_000, pulse_max_half_um=100,
                          widen_sigmas=2.0, widen_max_half_um=100)  # widening off
    _, long_track = plan_pulse(line(n=12, span_s=0.06), False, 1.0, 0, sorter)
    _, short_track = plan_pulse(line(n=3, span_s=0.01), False, 1.0, 0, sorter)
    _, noisy_track = plan_pulse(line(n=12, span_s=0.06, sigma_um=1.0), False, 1.0, 0, sorter)
    # Extrapolating a short stretch over a millimetre is uncertain: a longer pulse.
    assert short_track > 3 * long_track
    assert noisy_track > 2 * long_track
    # Never longer than the cap: a very uncertain track would deflect its neighbours.
    capped = SorterConfig(min_pulse_us=1, pulse_max_half_um=4.0, widen_max_half_um=4.0)
    assert plan_pulse(line(n=3, span_s=0.01), False, 1.0, 0, capped)[1] == pytest.approx(
        2 * 4.0 / 5000 * 1e6)


def test_an_untrusted_pulse_widens_up_to_the_nearest_known_neighbour():
    from ctc_live.pipeline.decision import sorter_window

    sorter = SorterConfig(min_pulse_us=1)
    fit = line(n=3, span_s=0.01)  # seen in few frames: its standard error is microns
    own, widest = (sorter_window(fit, False, sorter, w) for w in (False, True))
    um = 1 / 5000  # s of travel per µm

    def window(others, trusted=False):
        start_ns, width_us = plan_pulse(fit, trusted, 1.0, 10**9, sorter, others=others)
        return start_ns / 1e9, start_ns / 1e9 + width_us / 1e6

    assert (own[1] - own[0]) / um == pytest.approx(2 * sorter.pulse_max_half_um)
    assert (widest[1] - widest[0]) / um == pytest.approx(2 * sorter.widen_max_half_um)
    # No cell about: as wide as it may be, centred on the crossing.
    assert window([]) == pytest.approx(widest, abs=1e-9)
    # A cell crossing 6 µm after: the pulse ends where that cell's window starts.
    after = (own[1] + 2 * um, own[1] + 4 * um)
    assert window([after]) == pytest.approx((widest[0], after[0]), abs=1e-9)
    # Cells before it, the nearest one counts; one whose window overlaps its own leaves the
    # pulse its own window on that side, never shorter.
    before = [(widest[0] - 9 * um, widest[0] - 7 * um), (own[0] - 3 * um, own[0] - 2 * um)]
    assert window(before) == pytest.approx((own[0] - 2 * um, widest[1]), abs=1e-9)
    overlapping = (own[1] - 1 * um, own[1] + 1 * um)
    assert window([overlapping]) == pytest.approx((widest[0], own[1]), abs=1e-9)
    # A trusted line has no standard error to widen by.
    assert window([], trusted=True) == pytest.approx(
        sorter_window(fit, True, sorter), abs=1e-9)


def test_widening_below_the_pulse_rule_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"widen_sigmas \(1.0\) must not be below"):
        SorterConfig(widen_sigmas=1.0)
    with pytest.raises(ValidationError, match=r"widen_max_half_um \(20.0\) must not be below"):
        SorterConfig(pulse_max_half_um=25.0, widen_max_half_um=20.0)


@pytest.mark.parametrize(("neighbour", "clipped"), [("wbc", True), ("ctc", False)])
def test_the_decision_thread_widens_a_pulse_up_to_a_neighbour_not_a_ctc(tmp_path, neighbour,
                                                                       clipped):
    """Two cells in the field, the second crossing 6 µm after the first; the first is a CTC
    seen in few frames (an untrusted line). Its pulse stops short of a WBC's crossing and
    runs over a CTC's."""
    from ctc_live.classification.inference import Classified
    from ctc_live.config import Config
    from ctc_live.pipeline.decider import Decider
    from ctc_live.pipeline.decision import sorter_window
    from ctc_live.pipeline.messages import Observation
    from ctc_live.storage.store import RunStore

    config = Config()
    store, sorter = RunStore(tmp_path / "run.sqlite").start(), RecordingSorter()
    decider = Decider(config, store, sorter)
    crop = np.zeros((30, 30), np.float32)
    ctc_line = line(n=3, span_s=0.01)
    t0 = ctc_line.t0
    neighbour_line = LineFit(t0, ctc_line.x0 - 6.0, 5000.0, 12, 1e-3, 0.2)
    exposure_ns = time.monotonic_ns()
    scores = {1: 0.99, 2: 0.99 if neighbour == "ctc" else 0.01}
    seen = config.tracking.min_observations  # crops enough to decide early
    for k in range(seen):
        for track_id, fit in ((2, neighbour_line), (1, ctc_line)):
            observation = Observation(track_id, k, exposure_ns, exposure_ns, None, 1.0,
                                      250.0 + 20 * k, 240.0, 11.0, 5000.0, fit,
                                      track_id == 2, None, track_id == 1 and k == seen - 1,
                                      crop, k)
            decider.handle(observation)
            decider.handle(Classified(observation, scores[track_id], 0, 0, 1))
    store.close()
    assert decider.states == {1: "ctc", 2: neighbour}
    ((start_ns, width_us),) = sorter.pulses
    first = (start_ns - exposure_ns) / 1e9 + 1.0  # camera time
    last = first + width_us / 1e6
    widest = sorter_window(ctc_line, False, config.sorter, True)
    assert first == pytest.approx(widest[0], abs=1e-8)
    expected_last = widest[1]
    if clipped:  # by the neighbour's window (trusted: its widest is its own)
        expected_last = sorter_window(neighbour_line, True, config.sorter)[0]
        assert expected_last < widest[1]
    assert last == pytest.approx(expected_last, abs=1e-8)
    # The windows are kept only until they have passed: a cell seen after both crossed
    # leaves its own alone.
    later = line(n=3, span_s=0.01)
    decider.handle(Observation(3, 9, exposure_ns, exposure_ns, None, 2.0, 10.0, 240.0, 11.0,
                               5000.0, LineFit(2.0, 10.0, 5000.0, 3, later.stt, 0.2), False,
                               None, False, None, -1))
    assert list(decider._windows) == [3]


@pytest.mark.parametrize(("diameter_um", "frames", "counted"),
                         [(6.0, 3, False), (6.0, 4, True), (11.0, 2, True)])
def test_a_track_smaller_than_any_leukocyte_needs_more_frames_to_count(tmp_path, diameter_um,
                                                                      frames, counted):
    """Debris near the segmentation's size limit is found in a frame or two of its crossing:
    a track that small, seen in fewer than min_small_track_length frames, is noise (not a
    cell, never fired), however CTC-like its crops; a cell-sized track needs only
    min_track_length."""
    from ctc_live.classification.inference import Classified
    from ctc_live.pipeline.decider import Decider
    from ctc_live.pipeline.messages import Observation, TrackEnded
    from ctc_live.storage.store import RunStore

    config = Config()
    assert config.tracking.min_track_length == 2
    assert config.tracking.min_small_track_length == 4 and config.tracking.small_track_um == 7
    store, sorter = RunStore(tmp_path / "run.sqlite").start(), RecordingSorter()
    decider = Decider(config, store, sorter, lossless=True)
    crop = np.zeros((30, 30), np.float32)
    fit, exposure_ns = line(), time.monotonic_ns()
    for k in range(frames):
        observation = Observation(1, k, exposure_ns, exposure_ns, None, 1.0, 250.0 + 20 * k,
                                  240.0, diameter_um, 5000.0, fit, True, None,
                                  k == frames - 1, crop, k)
        decider.handle(observation)
        decider.handle(Classified(observation, 0.99, 0, 0, 1))
    decider.handle(TrackEnded(1, frames, exposure_ns, exposure_ns))
    decider.finish()
    store.close()
    counts = decider.counts
    assert (counts.cells, counts.ctc, counts.noise_tracks) == ((1, 1, 0) if counted
                                                               else (0, 0, 1))
    assert len(sorter.pulses) == int(counted)
    assert decider.decision(1) == ("ctc" if counted else "pending")


def test_a_span_pulse_covers_both_cells_of_a_blob_of_two():
    from ctc_live.pipeline.decision import COINCIDENT_APART_UM, ends_apart_um

    fit = line()  # the blob's centroid, between its two cells
    rear, front = line(velocity=4900.0), line(velocity=5100.0)  # parted by 49 µm at 1500
    centroid = SorterConfig(min_pulse_us=1, coincidence="centroid")
    span = SorterConfig(min_pulse_us=1, coincidence="span", span_max_um=100)

    def window(sorter, ends):
        start_ns, width_us = plan_pulse(fit, True, 1.0, 0, sorter, ends)
        return start_ns / 1e9, start_ns / 1e9 + width_us / 1e6

    apart = ends_apart_um(fit, (rear, front), 1500)
    assert apart == pytest.approx((1200 / 4900 - 1200 / 5100) * 5000)
    assert apart > COINCIDENT_APART_UM
    crossings = [line_.t_at(1500) - 1.0 for line_ in (rear, front)]
    first, last = window(span, (rear, front))
    assert first < min(crossings) and max(crossings) < last  # both cells are deflected
    assert window(centroid, (rear, front)) == window(centroid, None)  # the default ignores it
    # One cell (its lines together) gets the ordinary pulse in either mode.
    assert window(span, (fit, fit)) == window(centroid, None)
    # Never longer than span_max_um of travel, centred on the centroid's crossing.
    short = SorterConfig(min_pulse_us=1, coincidence="span", span_max_um=20)
    first, last = window(short, (rear, front))
    assert (last - first) * 5000 == pytest.approx(20)
    assert (first + last) / 2 == pytest.approx(fit.t_at(1500) - 1.0)


def test_a_pulse_aimed_at_one_cell_of_a_blob_of_two():
    """Told apart by their own crops, the CTC of a blob of two gets its own pulse in either
    coincidence mode; both CTCs get one over both crossings."""
    fit = line()
    rear, front = line(velocity=4900.0), line(velocity=5100.0)
    crossing = {0: rear.t_at(1500) - 1.0, 1: front.t_at(1500) - 1.0}

    for mode in ("centroid", "span"):
        sorter = SorterConfig(min_pulse_us=1, coincidence=mode, span_max_um=100)

        def window(aim, sorter=sorter):
            start_ns, width_us = plan_pulse(fit, True, 1.0, 0, sorter, (rear, front), aim)
            return start_ns / 1e9, start_ns / 1e9 + width_us / 1e6

        for end in (0, 1):
            first, last = window((end,))
            assert (first + last) / 2 == pytest.approx(crossing[end], abs=1e-9)
            assert not first < crossing[1 - end] < last  # its companion is not deflected
            # An end's line is never trusted: widened by its standard error, here (no cell
            # near) to the widest an untrusted pulse may be.
            assert (last - first) * 5000 == pytest.approx(2 * min(
                sorter.pulse_margin_us * 1e-6 * 5000 + sorter.pulse_margin_um
                + sorter.widen_sigmas * (rear, front)[end].x_sigma(crossing[end] + 1.0),
                sorter.widen_max_half_um), rel=0.03)
        first, last = window((0, 1))
        assert first < min(crossing.values()) and max(crossing.values()) < last


def test_an_aimed_pulse_widens_up_to_its_companion_and_no_further():
    from ctc_live.pipeline.decision import sorter_window

    sorter = SorterConfig(min_pulse_us=1)
    um = 1 / 5000  # s of travel per µm
    ctc = line(n=4, span_s=0.015)  # seen as a pair in few frames: microns of error
    companion = line(n=4, span_s=0.015, velocity=1200 / (1200 / 5000 + 12 * um))  # 12 µm on
    own, widest = (sorter_window(ctc, False, sorter, w) for w in (False, True))
    beside = sorter_window(companion, False, sorter, True)
    assert (widest[1] - widest[0]) / um == pytest.approx(2 * sorter.widen_max_half_um)
    assert own[1] < beside[0] < widest[1]
    start_ns, width_us = plan_pulse(line(), True, 1.0, 10**9, sorter, (ctc, companion), (0,))
    first, last = start_ns / 1e9, start_ns / 1e9 + width_us / 1e6
    assert (first, last) == pytest.approx((widest[0], beside[0]), abs=1e-9)
    # A cell known to cross just before it stops the widening on that side too.
    before = (own[0] - 3 * um, own[0] - 2 * um)
    start_ns, width_us = plan_pulse(line(), True, 1.0, 10**9, sorter, (ctc, companion), (0,),
                                    [before])
    assert start_ns / 1e9 == pytest.approx(before[1], abs=1e-9)


def test_an_aimed_pulse_on_a_line_of_few_frames_covers_the_centroid_line_too():
    """A cell's line fitted to the few frames its blob held two says little of its speed,
    and the blob's own line (the track's cell alone in its other frames) may be the better
    one: the pulse covers both crossings, up to span_max_um centred on the cell's."""
    from ctc_live.pipeline.decision import AIM_SURE_POINTS, sorter_window

    sorter = SorterConfig(min_pulse_us=1, span_max_um=25)
    um = 1 / 5000  # s of travel per µm
    fit = line(velocity=1200 / (1200 / 5000 - 9 * um))  # its crossing 9 µm before the cell's
    companion = line(velocity=1200 / (1200 / 5000 + 40 * um))  # far behind: no limit

    def window(cell):
        start_ns, width_us = plan_pulse(fit, True, 1.0, 10**9, sorter, (cell, companion), (0,))
        return start_ns / 1e9, start_ns / 1e9 + width_us / 1e6

    sure = line(n=AIM_SURE_POINTS, span_s=0.05)
    first, last = window(sure)
    assert first > fit.t_at(1500)  # on the cell's own line only
    short = line(n=AIM_SURE_POINTS - 1, span_s=0.05)
    first, last = window(short)
    crossing = short.t_at(1500)
    assert first < fit.t_at(1500) < crossing < last
    assert last == pytest.approx(sorter_window(short, False, sorter, True)[1], abs=1e-9)
    # Further off, the pulse stops half of span_max_um before the cell's crossing.
    fit = line(velocity=1200 / (1200 / 5000 - 30 * um))
    first, last = window(short)
    assert (crossing - first) / um == pytest.approx(12.5)


def test_a_blob_of_two_cells_is_decided_on_each_cells_crops_when_it_leaves():
    ev = evidence([0.1, 0.1, 0.1], crops=3)
    ev.two_cells_early = True  # end crops came with its first crops
    assert ev.evidence_for_decision(3, 0.5, 0.15) is None  # not before its ends' lines tell
    ev.fit, ev.ends, ev.end_pairs = line(), (line(velocity=4900.0), line(velocity=5100.0)), 2
    assert not ev.two_cells()
    ev.freeze()
    assert ev.two_cells()
    ev.end_scores = {(0, 0): 0.9, (0, 1): 0.2, (1, 1): 0.1}
    assert ev.end_evidence() is None  # the rear crop of pair 1 is still to come
    ev.ends_dropped.add((1, 0))
    assert ev.end_evidence() == ([0.9], [0.2, 0.1])
    ev.end_scores[2, 0] = 0.99  # sent after it began to leave: does not count
    assert ev.end_evidence() == ([0.9], [0.2, 0.1])
    # Two cells one behind the other at one speed: their lines cross together, still two.
    ev.ends = (line(), line())
    assert ev.two_cells()
    # Never long enough to hold two in enough frames (no lines): its own crops decide.
    ev.ends = None
    assert not ev.two_cells()
    assert ev.evidence_for_decision(3, 0.5, 0.15) == [0.1, 0.1, 0.1]


@pytest.mark.parametrize(("ends_velocity", "decision", "p_ctc"),
                         [((4900.0, 5100.0), "ctc", 0.95), ((5000.0, 5000.0), "ctc", 0.95),
                          (None, "wbc", 0.1)])
def test_the_decision_thread_decides_a_blob_of_two_on_its_cells(tmp_path, ends_velocity,
                                                                   decision, p_ctc):
    """The blob's own crops say WBC; its rear cell's crops say CTC. Two cells (their lines
    part on the way to the sorter, or cross it together): a CTC. Never two cells' lines
    (too few frames looked like two): its own crops decide, a WBC."""
    from ctc_live.classification.inference import Classified
    from ctc_live.config import Config
    from ctc_live.pipeline.decider import Decider
    from ctc_live.pipeline.messages import EndCrop, Observation, TrackEnded
    from ctc_live.storage.store import RunStore, read_run

    store = RunStore(tmp_path / "run.sqlite").start()
    decider = Decider(Config(), store)
    crop = np.zeros((30, 30), np.float32)
    ends = ends_velocity and tuple(line(velocity=v) for v in ends_velocity)
    for k in range(4):
        leaving = k == 3
        decider.handle(Observation(
            7, k, k, k, None, k / 200, 50.0 * k, 240.0, 11.0, 5000.0, line(), True,
            ends if leaving else None, leaving, crop, k, end_index=k))
    # Seen once more, cut by the frame's edge (no crops, no end lines), before the scores.
    decider.handle(Observation(7, 4, 4, 4, None, 0.02, 200.0, 240.0, 11.0, 5000.0, line(),
                               True, None, True, None, -1))
    observations = []  # scores come back after their observations, as in the pipeline
    for k in range(4):
        key = Observation(7, k, k, k, None, 0, 0, 0, 0, 0, None, True, None, False, crop, k)
        observations.append(Classified(key, 0.1, 0, 0, 1))
        for end, p in ((0, 0.95), (1, 0.05)):
            observations.append(Classified(EndCrop(7, k, end, k), p, 0, 0, 1))
    for message in observations:
        decider.handle(message)
    decider.handle(TrackEnded(7, 4, 4, 4))
    store.close()
    (cell,) = read_run(tmp_path)["cells"]
    assert cell["decision"] == decision
    assert cell["p_ctc"] == pytest.approx(p_ctc, abs=0.01)


def test_a_ctc_decided_early_whose_blob_holds_two_aims_at_the_cell_its_crops_name(tmp_path):
    """Decided CTC on its blob's first crops; as it leaves, its cells' lines part: the pulse
    waits for the cells' own crops, even when they come back after the track ended (the
    track must not be forgotten meanwhile, or its pulse is never sent), and aims at the cell
    they call a CTC."""
    from ctc_live.classification.inference import Classified
    from ctc_live.config import Config
    from ctc_live.pipeline.decider import Decider
    from ctc_live.pipeline.messages import EndCrop, Observation, TrackEnded
    from ctc_live.storage.store import RunStore, read_run

    store, sorter = RunStore(tmp_path / "run.sqlite").start(), RecordingSorter()
    config = Config()
    decider = Decider(config, store, sorter)
    crop = np.zeros((30, 30), np.float32)
    ends = (line(velocity=4900.0), line(velocity=5100.0))  # 48 µm apart at the sorter
    now = time.monotonic_ns()

    def observe(k, crop=None, crop_index=-1, ends=None, leaving=False, end_index=-1):
        return Observation(7, k, now, now, None, 1.0, 100.0 + 50 * k, 240.0, 11.0, 5000.0,
                           line(), False, ends, leaving, crop, crop_index, end_index=end_index)

    seen = config.tracking.min_observations  # crops enough to decide early
    for k in range(seen):
        decider.handle(observation := observe(k, crop=crop, crop_index=k))
        decider.handle(Classified(observation, 0.99, 0, 0, 1))
    assert decider.states[7] == "ctc"
    decider.handle(observe(seen, end_index=0))
    decider.handle(observe(seen + 1, end_index=1, ends=ends, leaving=True))
    decider.handle(TrackEnded(7, seen + 1, now, now))
    assert sorter.pulses == []  # waiting for the cells' own scores
    for index in range(2):
        for end, p in ((0, 0.02), (1, 0.98)):
            decider.handle(Classified(EndCrop(7, index, end, now), p, 0, 0, 1))
    store.close()
    ((start_ns, width_us),) = sorter.pulses
    centre_s = (start_ns - now) / 1e9 + 1.0 + width_us / 2e6  # camera time
    assert centre_s == pytest.approx(ends[1].t_at(1500), abs=1e-7)
    run = read_run(tmp_path)
    (pulse,) = run["pulses"]
    assert pulse["aim"] == "front"
    (cell,) = run["cells"]
    assert cell["decision"] == "ctc"


def test_pulse_width_is_clamped_to_the_safety_limits():
    sorter = SorterConfig(min_pulse_us=500, max_pulse_us=800, pulse_max_half_um=1e6,
                          widen_max_half_um=1e6)
    _, fast = plan_pulse(line(velocity=1e6), False, 1.0, 0, sorter)
    _, slow = plan_pulse(line(velocity=1.0), False, 1.0, 0, sorter)
    assert (fast, slow) == (500, 800)
    assert not math.isnan(fast)


def test_wilson_interval_for_rare_events():
    from ctc_live.pipeline.scoring import wilson_interval

    low, high = wilson_interval(0, 20)
    assert low == 0 and 0.1 < high < 0.2  # no successes still bounds the rate
    low, high = wilson_interval(95, 100)
    assert low < 0.95 < high <= 1
    assert wilson_interval(0, 0) is None


def test_a_missed_ctc_is_put_down_to_its_first_cause():
    from ctc_live.pipeline.scoring import miss_cause

    assert miss_cause(None, [], set()) == "no_track"
    assert miss_cause("wbc", [], set()) == "decided_wbc"  # named by its longest track
    assert miss_cause("uncertain", [], {2}) == "decided_uncertain"
    assert miss_cause("wbc", [3], set()) == "not_fired"  # a shorter track was decided CTC
    assert miss_cause("wbc", [3], {3}) == "pulse_off"


def test_each_decided_track_is_matched_to_the_true_cell_it_followed():
    from ctc_live.pipeline.scoring import TruthScorer, match_track
    from ctc_live.simulation import FlowScene

    config = Config()
    scene = FlowScene(config)
    scene.generate_until(2.0)
    width_um = config.camera.width * config.camera.pixel_size_um
    a, b = [c for c in scene.cells if c.kind != "debris" and 0.5 < c.t_at_x(0) < 1.5][:2]

    def path(cell, n, offset_um=0.3):  # observations along its crossing, a little off
        t0, t1 = cell.t_at_x(20), cell.t_at_x(width_um - 20)
        return [(t, cell.x_um(t) + offset_um, cell.y_um - offset_um)
                for t in np.linspace(t0, t1, n)]

    assert match_track(scene, path(a, 10), width_um) is a
    assert match_track(scene, path(a, 3) + path(b, 5), width_um) is b  # by majority
    assert match_track(scene, path(a, 5, offset_um=50.0), width_um) is None  # nothing near
    assert match_track(scene, [], width_um) is None

    scorer = TruthScorer(scene, width_um)
    kind = "ctc" if a.kind == "wbc" else "wbc"  # the other kind: decided wrong
    assert scorer.add(1, kind, 0.5, [0.9, 0.2, 0.7], path(a, 4)) is a
    scorer.add(2, a.kind, 0.5, [0.4], path(a, 9))  # its longest track: decided right
    scorer.add(3, "ctc", 0.5, [], path(a, 2))
    decisions = scorer.longest_decisions(len(scene.history()))
    assert decisions[a.id] == a.kind and decisions[b.id] == ""  # b: no track
    decided = {1: kind, 2: a.kind, 3: "ctc"}
    assert scorer.ctc_tracks[a.id] == [t for t, d in decided.items() if d == "ctc"]
    assert scorer.cell_of_ctc_track[3] is a
    right = sum((p >= 0.5) == (a.kind == "ctc") for p in (0.9, 0.2, 0.7, 0.4))
    assert (scorer.crops_right, scorer.crops_scored) == (right, 4)


def test_a_run_is_scored_on_the_truth_of_every_cell_even_those_forgotten():
    from ctc_live.pipeline.scoring import TRUTH_HORIZON_S, TruthScorer, score_simulated_run
    from ctc_live.simulation import FlowScene

    config = Config()
    scene = FlowScene(config)
    scene.generate_until(14.0)
    width_um = config.camera.width * config.camera.pixel_size_um
    sort_x = config.sorter.sort_distance_um
    ctcs = [c for c in scene.cells if c.kind == "ctc" and 1 < c.t_at_x(0) and c.t_at_x(sort_x) < 13]
    first, late = ctcs[0], ctcs[-1]
    scorer = TruthScorer(scene, width_um)
    for track_id, cell in enumerate((first, late)):
        t = np.linspace(cell.t_at_x(10), cell.t_at_x(width_um - 10), 8)
        scorer.add(track_id, "ctc", 0.5, [0.9], list(zip(t, cell.x_um(t), [cell.y_um] * 8)))
    # The second track is over 10 s later: the Cell objects of the first second are gone.
    assert late.t_at_x(10) - TRUTH_HORIZON_S > first.t_at_x(width_um) + 1
    assert scene.cells[0].id > first.id and len(scene.history()) > scene.cells[-1].id
    # One pulse, on the first CTC's crossing (host time = scene time here).
    crossing_ns = round(first.t_at_x(sort_x) * 1e9)
    truth = score_simulated_run(scorer, [(crossing_ns - 50_000, 100.0)], 0, 0.0, 13.5, sort_x,
                                {0: (crossing_ns - 50_000, 100.0, crossing_ns - 50_000)})
    assert truth["deflected"] >= 1 and truth["ctc"] >= len(ctcs) - 1
    assert truth["recovery"] == 1 / truth["ctc"]
    missed = truth["ctc_missed"]
    assert missed["not_fired"] == 1  # the late CTC: decided, no pulse
    assert sum(missed.values()) == truth["ctc"] - 1
    assert abs(truth["pulse_error_us_median"]) < 1
