"""Tracking on synthetic flow: known cells, noisy detections, misses; one track per cell."""

import numpy as np
import pytest

from ctc_live.tracking import FlowModel, Track, Tracker
from ctc_live.tracking.tracker import ENDS_MIN_POINTS

FPS = 200.0
WIDTH_UM = 320.0  # 640 px at 0.5 µm/px


def synthetic_flow(n_cells=300, rate_hz=100.0, seed=1, miss_prob=0.02, noise_um=0.4):
    """Detections per frame of cells in Poiseuille flow: (frame, t, x, y, true id)."""
    rng = np.random.default_rng(seed)
    t_enter = np.cumsum(rng.exponential(1 / rate_hz, n_cells))
    y = 120 + rng.uniform(-55, 55, n_cells)
    v = 1.5 * 5000 * (1 - ((y - 120) / 60) ** 2) * (1 + 0.02 * rng.standard_normal(n_cells))
    frames = []
    for f in range(int((t_enter[-1] + 0.5) * FPS)):
        t = f / FPS
        x = (t - t_enter) * v
        inside = np.flatnonzero((x > 0) & (x < WIDTH_UM))
        seen = inside[rng.random(len(inside)) > miss_prob]
        xs = x[seen] + noise_um * rng.standard_normal(len(seen))
        ys = y[seen] + noise_um * rng.standard_normal(len(seen))
        frames.append((f, t, xs, ys, seen))
    return frames, v


def run_tracker(frames, mean_velocity=5000.0):
    flow = FlowModel(center_y_um=120, width_um=120, mean_velocity_um_s=mean_velocity)
    tracker = Tracker(flow, WIDTH_UM, tolerance_um=6.0, max_missed_frames=1)
    members: dict[int, list[int]] = {}
    ended = []
    for f, t, xs, ys, truth in frames:
        update = tracker.update(f, t, xs, ys)
        for track_id, cell in zip(update.track_ids, truth):
            members.setdefault(int(track_id), []).append(int(cell))
        ended += update.ended
    ended += tracker.finish()
    return members, ended, flow


def test_one_track_per_cell_with_misses_and_noise():
    frames, _ = synthetic_flow()
    members, ended, _ = run_tracker(frames)
    # Tracks hold one cell (synthetic cells may overlap: a few swap), a cell is one track.
    assert np.mean([len(set(cells)) == 1 for cells in members.values()]) >= 0.98
    tracks_per_cell = np.bincount([cells[0] for cells in members.values()])
    seen_cells = np.flatnonzero(tracks_per_cell)
    assert np.mean(tracks_per_cell[seen_cells] == 1) >= 0.98
    assert len(ended) == len(members)


def test_velocity_learned_when_configured_mean_is_wrong():
    frames, _ = synthetic_flow(seed=2)
    # Configured mean velocity 30% too low: linking must still work and the profile learn.
    members, _, flow = run_tracker(frames, mean_velocity=3500.0)
    purity = np.mean([len(set(c)) == 1 for c in members.values()])
    assert purity >= 0.99
    assert abs(flow.expected(120.0) - 7500) / 7500 < 0.05


def test_track_velocity_estimate_is_accurate():
    frames, v_true = synthetic_flow(n_cells=50, seed=3, miss_prob=0.0)
    flow = FlowModel(center_y_um=120, width_um=120, mean_velocity_um_s=5000)
    tracker = Tracker(flow, WIDTH_UM, tolerance_um=6.0, max_missed_frames=1)
    cell_of: dict[int, int] = {}
    errors = []
    for f, t, xs, ys, truth in frames:
        update = tracker.update(f, t, xs, ys)
        cell_of.update(zip(update.track_ids.tolist(), truth.tolist()))
        for track in update.ended:
            if track.n >= 6:
                cell = cell_of[track.id]
                errors.append(abs(track.velocity(flow) - v_true[cell]) / v_true[cell])
    assert errors and np.median(errors) < 0.01


def test_a_cell_hidden_in_its_neighbours_blob_keeps_its_track():
    """Two cells side by side segment as one blob for a few frames: the blob goes to one
    track, the other coasts along its line inside the blob and picks its cell up after."""
    # Slow cells (2 mm/s: 10 µm a frame) so that the merge happens well inside the field.
    flow = FlowModel(center_y_um=120, width_um=120, mean_velocity_um_s=1333)
    tracker = Tracker(flow, WIDTH_UM, tolerance_um=6.0, max_missed_frames=1,
                      max_hidden_frames=10)
    ids_a, ids_b = set(), set()
    for f in range(40):
        t = f / FPS
        xa, xb = 5 + 2000 * t, 5 + 2040 * t  # b drifts ahead of a, 10 µm apart in y
        if 10 <= f < 16:  # merged: one blob between them, spanning both
            xs, ys = np.array([(xa + xb) / 2]), np.array([120.0])
            boxes = np.array([[min(xa, xb) - 6, max(xa, xb) + 6, 109.0, 131.0]])
            update = tracker.update(f, t, xs, ys, reliable=np.array([False]), boxes=boxes)
            assert not update.ended
            continue
        xs, ys = np.array([xa, xb]), np.array([115.0, 125.0])
        if max(xs) > WIDTH_UM:
            break
        update = tracker.update(f, t, xs, ys, boxes=np.array(
            [[x - 6, x + 6, y - 6, y + 6] for x, y in zip(xs, ys)]))
        ids_a.add(int(update.track_ids[0]))
        ids_b.add(int(update.track_ids[1]))
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b


def test_without_a_blob_to_hide_in_a_lost_track_ends():
    flow = FlowModel(center_y_um=120, width_um=120, mean_velocity_um_s=5000)
    tracker = Tracker(flow, WIDTH_UM, tolerance_um=6.0, max_missed_frames=1,
                      max_hidden_frames=10)
    for f in range(5):
        tracker.update(f, f / FPS, np.array([5 + 25.0 * f]), np.array([120.0]),
                       boxes=np.zeros((1, 4)))
    empty = np.zeros(0)
    assert not tracker.update(5, 5 / FPS, empty, empty, boxes=np.zeros((0, 4))).ended
    assert len(tracker.update(6, 6 / FPS, empty, empty, boxes=np.zeros((0, 4))).ended) == 1


def test_line_standard_error_matches_the_scatter_of_extrapolations():
    """x_sigma(t) far beyond the observed stretch is the spread of the extrapolated position
    over many noisy tracks (the pulse width depends on it)."""
    rng = np.random.default_rng(4)
    t = np.arange(12) / FPS
    far = 0.3  # s: ~1.2 mm beyond the field at 5 mm/s
    predicted, sigmas = [], []
    for _ in range(400):
        track = Track(1)
        for i, ti in enumerate(t):
            track.add(i, ti, 10 + 5000 * ti + 0.3 * rng.standard_normal(), 120.0)
        predicted.append(track.fit.x_at(far) - (10 + 5000 * far))
        sigmas.append(track.fit.x_sigma(far))
    assert np.std(predicted) == pytest.approx(np.median(sigmas), rel=0.15)


def test_crossing_times_are_right_with_a_long_exposure():
    """A moving cell's image is its mean position over the exposure: the tracker times it at
    the exposure's middle, so the predicted arrival at the sorter is not early by half the
    exposure (0.25 ms here, at 0.5 ms exposure)."""
    from ctc_live.config import Config
    from ctc_live.pipeline.segmenting import FrameAnalyser
    from ctc_live.segmentation.flow import FlowSegmenter
    from ctc_live.simulation import FlowScene

    config = Config()
    config.camera.exposure_ms = 0.5
    config.simulation.seed = 5
    scene = FlowScene(config)
    analyser = FrameAnalyser(config, FlowSegmenter(config))
    fps, sort_um = config.camera.fps, config.sorter.sort_distance_um
    errors_ms = []
    for number in range(400):
        t = number / fps
        scene.generate_until(t)
        result = analyser.process(scene.render(t), number, t * 1000)
        for d in result.detections:
            if d.fit is None or d.fit.n < 8:
                continue
            near = [c for c in scene.visible_cells(t)
                    if abs(c.y_um - d.y_um) < 2 and abs(c.x_um(t) - d.x_um) < 6]
            if len(near) == 1:
                errors_ms.append((d.fit.t_at(sort_um) - near[0].t_at_x(sort_um)) * 1000)
    assert len(errors_ms) > 100
    assert abs(np.median(errors_ms)) < 0.06, np.percentile(errors_ms, [10, 50, 90])


def test_a_blob_merged_with_a_passing_neighbour_is_linked_but_not_fitted():
    """A faster neighbour overtakes a cell 3 µm beside it; for two frames they are one blob,
    round enough to pass for a single cell but more eccentric than any single one. Its
    centroid, pulled by µm, is left out of the line the trigger extrapolates to the sorter."""
    from test_segmentation import bright_field_cell, noisy_background

    from ctc_live.config import Config
    from ctc_live.pipeline.segmenting import FrameAnalyser
    from ctc_live.segmentation.flow import FlowSegmenter

    def sorter_error_um(fit_max_eccentricity: float) -> tuple[float, int, int]:
        config = Config()
        config.camera.fps, config.camera.exposure_ms = 150, 0.001  # no motion blur drawn
        config.tracking.fit_max_eccentricity = fit_max_eccentricity
        analyser = FrameAnalyser(config, FlowSegmenter(config))
        px, fps = config.camera.pixel_size_um, config.camera.fps
        start = config.segmentation.background_frames
        seen, fit = 0, None
        for number in range(start + 12):
            image = noisy_background(seed=10 + number)
            t = (number - start) / fps
            if number >= start:
                bright_field_cell(image, (60 + 5000 * t) / px, 240, 11, 600)
                bright_field_cell(image, (30 + 5600 * t) / px, 246, 11, 600, seed=4)
            result = analyser.process(image.astype(np.uint16), number, 1000 * number / fps)
            mine = [d for d in result.detections if abs(d.y_px - 240) < 3.5]
            if mine:
                seen, fit = seen + 1, mine[0].fit
        sort_um = config.sorter.sort_distance_um
        t_cross = start / fps + (sort_um - 60) / 5000
        return abs(fit.x_at(t_cross) - sort_um), fit.n, seen

    error, fitted, seen = sorter_error_um(Config().tracking.fit_max_eccentricity)
    error_all, fitted_all, _ = sorter_error_um(1.0)
    assert fitted < seen and fitted_all > fitted  # the merged frames are left out
    assert error < 0.5, error
    assert error_all > 2 * error, (error_all, error)


def test_a_line_is_trusted_with_enough_reliable_points_and_no_touching_neighbour():
    def track(n=10, unreliable=(), touching=()):
        t = Track(1)
        for i in range(n):
            t.add(i, i / FPS, 25.0 * i, 120.0, reliable=i not in unreliable,
                  touching=i in touching)
        return t

    assert track().trusted
    assert track(unreliable=(0,)).trusted  # a cell entering is cut by the edge for a frame
    assert not track(n=7).trusted
    assert not track(unreliable=(0, 5)).trusted
    assert not track(touching=(4,)).trusted  # once touched, the slope may hide the pull


def test_a_blob_of_two_cells_has_a_line_for_each_cell_whatever_their_orientation():
    def track(cells, n=12, off=None):
        """Cells (x at t = 0, y, velocity) sharing one blob; ``off``: a frame where the
        pair's centres are 6 µm off (a third cell joined the blob)."""
        t = Track(1)
        for i in range(n):
            ts = i / FPS
            (xa, ya), (xb, yb) = ((x0 + v * ts, y) for x0, y, v in cells)
            if i == off:
                xa, xb = xa + 6.0, xb + 6.0
            pair = (xa, ya, xb, yb) if xa <= xb else (xb, yb, xa, ya)  # rear cell first
            t.add(i, ts, (xa + xb) / 2, (ya + yb) / 2, pair=pair)
        return t

    behind = track([(20.0, 120.0, 5000.0), (25.0, 121.0, 5200.0)])  # the front cell faster
    rear, front = behind.ends
    assert (rear.velocity, front.velocity) == (pytest.approx(5000.0), pytest.approx(5200.0))
    assert rear.x_at(0.0) == pytest.approx(20.0) and front.x_at(0.0) == pytest.approx(25.0)
    # One above the other, the lower one faster: it overtakes the upper one in the third
    # frame, and each line stays with its cell (in the order of the first frame).
    overtaking = track([(22.0, 114.0, 5000.0), (18.0, 126.0, 5300.0)])
    lower, upper = overtaking.ends
    assert (lower.velocity, upper.velocity) == (pytest.approx(5300.0), pytest.approx(5000.0))
    assert lower.x_at(0.0) == pytest.approx(18.0) and upper.x_at(0.0) == pytest.approx(22.0)
    assert overtaking.ends_swapped  # the segmentation's rear cell is now the upper one
    # A frame off the pair's lines is left out of them.
    rear, front = track([(20.0, 120.0, 5000.0), (25.0, 121.0, 5200.0)], off=6).ends
    assert (rear.velocity, front.velocity) == (pytest.approx(5000.0), pytest.approx(5200.0))
    assert track([(20.0, 120.0, 5000.0), (25.0, 121.0, 5200.0)],
                 n=ENDS_MIN_POINTS - 1).ends is None


def test_a_run_of_frames_where_a_third_cell_joined_the_blob_is_left_out_of_its_lines():
    """The blob's last three frames of twelve hold another pair, 2.5 µm off the cells' paths:
    least squares bends towards such a run, so that none of it looks far off the bent line;
    the line through the other nine has each cell's speed."""
    t = Track(1)
    for i in range(12):
        ts = i / FPS
        xa, xb = 20.0 + 5000.0 * ts, 25.0 + 5200.0 * ts
        if i >= 9:
            xa, xb = xa + 2.5, xb + 2.5
        t.add(i, ts, (xa + xb) / 2, 120.5, pair=(xa, 120.0, xb, 121.0))
    rear, front = t.ends
    assert (rear.velocity, front.velocity) == (pytest.approx(5000.0), pytest.approx(5200.0))
    assert rear.n == front.n == 9
    # A recording's repeated frame (its timestamp twice) gives no slope, and no error.
    t = Track(2)
    for i in (0, 1, 2, 2, 3, 4):
        ts = i / FPS
        t.add(i, ts, 22.5 + 5100.0 * ts, 120.5,
              pair=(20.0 + 5000.0 * ts, 120.0, 25.0 + 5200.0 * ts, 121.0))
    assert [line.velocity for line in t.ends] == [pytest.approx(5000.0), pytest.approx(5200.0)]


def test_detections_touching_as_circles():
    from ctc_live.pipeline.segmenting import TOUCH_GAP_UM, touching

    x = np.array([0.0, 12.0 + TOUCH_GAP_UM - 0.1, 100.0])
    flags = touching(x, np.zeros(3), np.full(3, 12.0))
    assert flags.tolist() == [True, True, False]
    assert touching(x[:1], np.zeros(1), np.full(1, 12.0)).tolist() == [False]


def test_two_cells_overlapping_for_the_whole_crossing_are_told_from_one():
    """Two cells 1 µm apart across the flow and along it, the front one 1.2% faster, are one
    blob from entry to exit. Their centroid's line misses both at the sorter; the blob's ends give
    each cell's line."""
    from test_segmentation import bright_field_cell, noisy_background

    from ctc_live.config import Config
    from ctc_live.pipeline.decision import COINCIDENT_APART_UM, ends_apart_um
    from ctc_live.pipeline.segmenting import FrameAnalyser
    from ctc_live.segmentation.flow import FlowSegmenter

    def leaving_detection(cells):
        config = Config()
        config.camera.exposure_ms = 0.001  # no motion blur drawn
        analyser = FrameAnalyser(config, FlowSegmenter(config))
        px, fps = config.camera.pixel_size_um, config.camera.fps
        start = config.segmentation.background_frames
        last = None
        for number in range(start + 14):
            image = noisy_background(seed=10 + number)
            t = (number - start) / fps
            if number >= start:
                for k, (x0, y_px, v) in enumerate(cells):
                    bright_field_cell(image, (x0 + v * t) / px, y_px, 11, 600, seed=k)
            result = analyser.process(image.astype(np.uint16), number, 1000 * number / fps)
            last = result.detections[0] if result.detections else last
        return last

    one = leaving_detection([(-20, 240, 5000)])
    two = leaving_detection([(-20, 240, 5000), (-19, 242, 5060)])
    assert one.ends is None  # a round blob: no end lines, so never two cells
    assert ends_apart_um(one.fit, one.ends, 1500) == 0
    rear, front = two.ends
    assert rear.velocity == pytest.approx(5000, abs=20)
    assert front.velocity == pytest.approx(5060, abs=20)
    assert ends_apart_um(two.fit, two.ends, 1500) > COINCIDENT_APART_UM
