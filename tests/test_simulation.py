"""The simulated flow scene: ground truth, determinism, appearance, speed-independent facts."""

import numpy as np
import pytest

from ctc_live.config import Config
from ctc_live.errors import CtcLiveError
from ctc_live.simulation import FlowScene
from ctc_live.simulation.truth import read_truth, truth_path, write_truth


def make_config(**sim) -> Config:
    config = Config()
    for key, value in sim.items():
        setattr(config.simulation, key, value)
    return config


def test_same_seed_same_frames_whatever_the_order():
    a, b = FlowScene(make_config(seed=3)), FlowScene(make_config(seed=3))
    later = a.render(0.4)
    b.render(0.1)
    assert np.array_equal(b.render(0.4), later)
    assert [c.y_um for c in a.cells[:20]] == [c.y_um for c in b.cells[:20]]
    assert not np.array_equal(FlowScene(make_config(seed=4)).render(0.4), later)


def test_a_scene_that_forgets_past_cells_renders_the_same_frames():
    kept, forgetful = FlowScene(make_config(seed=5)), FlowScene(make_config(seed=5))
    for k in range(0, 400, 7):  # 2 s of a 200 fps run, forward
        t = k / 200
        assert np.array_equal(forgetful.render(t), kept.render(t))
        forgetful.forget_before(t)
    assert [c.id for c in forgetful.visible_cells(t)] == [c.id for c in kept.visible_cells(t)]
    # Only cells that could still be in the field are kept; ids go on from the first cell.
    assert 0 < len(forgetful.cells) < len(kept.cells) / 3
    assert forgetful.cells[-1].id == kept.cells[-1].id


def test_frame_is_12_bit_uint16_of_the_configured_size():
    scene = FlowScene(Config())
    image = scene.render(0.2)
    assert image.dtype == np.uint16 and image.shape == (480, 640)
    assert 0 < image.min() and image.max() <= 4095


def test_visible_cells_are_in_the_field_and_drawn_where_the_truth_says():
    scene = FlowScene(make_config(debris_rate_hz=0.0, doublet_fraction=0.0))
    t = 0.3
    empty = scene.static_transmission * scene.illumination
    image = scene.render(t).astype(np.float32)
    cells = scene.visible_cells(t)
    assert len(cells) >= 3
    px = scene.pixel_size_um
    inside = [c for c in cells if 10 < c.x_um(t) < scene.width_um - 10]
    for c in inside:
        assert abs(c.y_um - scene.channel_center_um) < scene.channel_width_um / 2
        x, y = round(c.x_um(t) / px), round(c.y_um / px)
        r = round(c.diameter_um / px / 3)
        at_cell = np.abs(image[y - r : y + r, x - r : x + r] - empty[y - r : y + r, x - r : x + r])
        assert at_cell.mean() > 60, f"cell {c.id} not visible at its true position"
    # Between two frames each cell moves by its velocity.
    c = inside[0]
    assert c.x_um(t + 0.005) - c.x_um(t) == pytest.approx(c.velocity_um_s * 0.005)


def test_sizes_overlap_like_the_paper_and_flow_speed_matches_config():
    scene = FlowScene(make_config(ctc_fraction=0.5, cell_rate_hz=400.0))
    scene.generate_until(10.0)
    d = {k: np.array([c.diameter_um for c in scene.cells if c.kind == k]) for k in ("ctc", "wbc")}
    assert abs(d["ctc"].mean() - 11.5) < 0.3 and abs(d["wbc"].mean() - 11.5) < 0.3
    assert d["ctc"].std() > 1.6 * d["wbc"].std()
    v = np.array([c.velocity_um_s for c in scene.cells if c.kind != "debris"])
    assert v.mean() == pytest.approx(5000, rel=0.05)
    assert {"ctc", "wbc", "debris"} == {c.kind for c in scene.cells}


def test_mean_brightness_does_not_give_the_class_away():
    scene = FlowScene(make_config(ctc_fraction=0.5, debris_rate_hz=0.0))
    scene.generate_until(3.0)
    means = {"ctc": [], "wbc": []}
    for c in scene.cells[:300]:
        sprite = scene.cell_sprite(c)
        h = sprite.shape[0] // 2
        r = int(scene.morphology(c).radius_px * 0.8)
        means[c.kind].append(sprite[h - r : h + r, h - r : h + r].mean())
    ctc, wbc = np.array(means["ctc"]), np.array(means["wbc"])
    # Probability that a random CTC is darker than a random WBC: near 0.5, not near 0 or 1.
    auc = (ctc[:, None] < wbc[None, :]).mean()
    assert 0.25 < auc < 0.75


def test_motion_blur_grows_with_exposure():
    short, long = FlowScene(Config()), Config()
    long.camera.exposure_ms = 2.0  # 5 mm/s x 2 ms = 10 µm = 20 px of travel
    long_scene = FlowScene(long)
    short.generate_until(0.1)
    long_scene.generate_until(0.1)
    cell = short.cells[0]
    assert (
        long_scene.cell_sprite(long_scene.cells[0]).shape[1] > short.cell_sprite(cell).shape[1] + 10
    )


def test_fluorescence_marks_ctcs_only_and_is_off_unless_enabled():
    with pytest.raises(CtcLiveError, match="simulation.fluorescence"):
        FlowScene(Config()).render_fluorescence(0.1)
    scene = FlowScene(
        make_config(fluorescence=True, ctc_fraction=0.5, debris_rate_hz=0.0, doublet_fraction=0.0)
    )
    t = 0.35
    fl = scene.render_fluorescence(t).astype(float)
    level = {"ctc": [], "wbc": []}
    for c in scene.visible_cells(t):
        x, y = round(c.x_um(t) / 0.5), round(c.y_um / 0.5)
        if 8 <= x < 632:
            level[c.kind].append(fl[y - 3 : y + 4, x - 3 : x + 4].mean())
    assert level["ctc"] and level["wbc"]
    assert min(level["ctc"]) > max(level["wbc"]) + 200


def test_ground_truth_round_trips(tmp_path):
    scene = FlowScene(Config())
    path = truth_path(tmp_path / "run.ome.tif")
    assert path.name == "run.truth.json"
    n = write_truth(scene, path, 1.0)
    cells = read_truth(path)
    assert len(cells) == n > 50
    assert cells[7].x_um(0.8) == pytest.approx(scene.cells[7].x_um(0.8))
    assert cells[7].kind == scene.cells[7].kind


def test_bad_ground_truth_file_is_named(tmp_path):
    bad = tmp_path / "x.truth.json"
    bad.write_text("{}")
    with pytest.raises(CtcLiveError, match="x.truth.json"):
        read_truth(bad)
