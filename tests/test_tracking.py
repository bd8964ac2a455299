"""Tracking on synthetic flow: known cells, noisy detections, misses; one track per cell."""

import numpy as np

from ctc_live.tracking import FlowModel, Tracker

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
