"""Config files: the shipped ones validate; each kind of bad file gives one clear error."""

import subprocess
import sys
from pathlib import Path

import pytest

from ctc_live.cli import main
from ctc_live.config import CONFIG_DIR, Config, load_config
from ctc_live.errors import ConfigError


@pytest.mark.parametrize("name", ["sim.yaml", "ix70.yaml"])
def test_shipped_configs_validate(name, capsys):
    assert main(["config", "check", str(CONFIG_DIR / name)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "camera:" in out


def test_sim_yaml_matches_defaults_where_it_speaks():
    config = load_config(CONFIG_DIR / "sim.yaml")
    assert config.camera.core == "sim"
    assert config.sorter.port == "emulator"
    assert config.classifier.model == Config().classifier.model


def test_ix70_resolves_mm_config_beside_the_repo():
    config = load_config(CONFIG_DIR / "ix70.yaml")
    assert config.camera.mm_config.name == "ix70.cfg"
    assert config.camera.mm_config.is_file()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


BAD_CONFIGS = {
    "unknown key": ("camera:\n  fsp: 200\n", ["camera.fsp", "unknown key", "fsp"]),
    "wrong type": ("camera:\n  fps: fast\n", ["camera.fps", "'fast'", "valid number"]),
    "negative rate": ("simulation:\n  cell_rate_hz: -5\n", ["simulation.cell_rate_hz", "-5", "greater than 0"]),
    "missing cfg": (
        "camera:\n  core: micromanager\n  mm_config: nowhere/rig.cfg\n",
        ["camera", "mm_config", "rig.cfg", "does not exist", "Micro-Manager .cfg"],
    ),
    "micromanager without cfg": (
        "camera:\n  core: micromanager\n",
        ["camera", "mm_config is required"],
    ),
    "clock sync too rare": (
        "sorter:\n  ping_interval_ms: 5000\n",
        ["sorter.ping_interval_ms", "5000", "less than or equal to 500"],
    ),
    "bad choice": ("classifier:\n  device: gpu\n", ["classifier.device", "'gpu'", "'auto', 'cpu' or 'cuda'"]),
    "nice out of range": ("classifier:\n  nice: 25\n", ["classifier.nice", "25", "less than or equal to 19"]),
    "removed key": ("sorter:\n  sort_region_um: 100\n", ["sorter.sort_region_um", "unknown key"]),
    "negative pulse margin": (
        "sorter:\n  pulse_margin_um: -0.5\n",
        ["sorter.pulse_margin_um", "-0.5", "greater than or equal to 0"],
    ),
    "unknown coincidence mode": (
        "sorter:\n  coincidence: both\n",
        ["sorter.coincidence", "'both'", "'centroid' or 'span'"],
    ),
    "small-track length not positive": (
        "tracking:\n  min_small_track_length: 0\n",
        ["tracking.min_small_track_length", "0", "greater than 0"],
    ),
    "negative small-track size": (
        "tracking:\n  small_track_um: -7\n",
        ["tracking.small_track_um", "-7", "greater than or equal to 0"],
    ),
    "unreadable yaml": ("camera: [unclosed\n", ["not valid YAML"]),
    "not a mapping": ("- a\n- b\n", ["expected a mapping"]),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_names_file_field_value_and_expectation(tmp_path, case):
    text, expected = BAD_CONFIGS[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_cli_exits_nonzero_without_traceback(tmp_path):
    path = write(tmp_path, "camera:\n  fps: -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ctc_live", "config", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "camera.fps: got -1" in proc.stderr


def test_show_default_round_trips(tmp_path, capsys):
    assert main(["config", "show-default"]) == 0
    path = write(tmp_path, capsys.readouterr().out)
    assert load_config(path) == Config()


def test_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError, match="min_diameter_um"):
        load_config(write(tmp_path, "segmentation:\n  min_diameter_um: 40\n"))
    with pytest.raises(ConfigError, match="wider than the image"):
        load_config(write(tmp_path, "channel:\n  width_um: 1000\n"))


def test_frame_ring_defaults_to_the_sorters_lead_time():
    # Fastest cell 7.5 mm/s: (1500 - 320) µm in 157 ms, less 5 ms lead and 30 ms allowance.
    assert load_config(None).frame_queue_slots() == 24  # at 200 fps
    assert load_config(None, overrides={"camera": {"fps": 100}}).frame_queue_slots() == 12
    explicit = load_config(None, overrides={"pipeline": {"frame_queue": 50}})
    assert explicit.frame_queue_slots() == 50
    near = load_config(None, overrides={"sorter": {"sort_distance_um": 400}})
    assert near.frame_queue_slots() == 8  # never fewer: short hiccups must not drop frames
