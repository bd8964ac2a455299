"""Run configuration: one pydantic model tree, loaded from YAML.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored
setting. Relative paths in a YAML file are resolved against that file's folder, so a config
means the same thing whatever the working directory is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ctc_live.errors import ConfigError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG_FILE = CONFIG_DIR / "sim.yaml"
DEFAULT_MODEL_FILE = REPO_ROOT / "models" / "compact-sim.safetensors"

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Resolve a relative path against the folder of the YAML file being loaded."""
    if path is None or path.is_absolute():
        return path
    base = (info.context or {}).get("base_dir")
    return (Path(base) / path).resolve() if base else path.resolve()


class CameraConfig(Section):
    """Where frames come from and what they look like."""

    core: Literal["sim", "replay", "micromanager"] = "sim"
    mm_config: Path | None = Field(
        None, description="Micro-Manager .cfg file; required when core is 'micromanager'"
    )
    recording: Path | None = Field(
        None, description="OME-TIFF recording to replay; required when core is 'replay'"
    )
    replay_speed: PositiveFloat | Literal["max"] = Field(
        1.0, description="replay at the recorded timing × this factor, or 'max' (as fast as possible)"
    )
    width: PositiveInt = 640
    height: PositiveInt = 480
    bit_depth: Annotated[int, Field(ge=8, le=16)] = 12
    exposure_ms: PositiveFloat = 0.1
    fps: PositiveFloat = 200.0
    pixel_size_um: PositiveFloat = 0.5
    buffer_mb: PositiveInt = Field(256, description="Micro-Manager circular buffer size")

    _resolve_paths = field_validator("mm_config", "recording")(_resolve)

    @model_validator(mode="after")
    def _files_for_core(self) -> CameraConfig:
        if self.core == "micromanager":
            _require_file(self.mm_config, "mm_config", "a Micro-Manager .cfg file")
        if self.core == "replay":
            _require_file(self.recording, "recording", "an OME-TIFF recording")
        return self


def _require_file(path: Path | None, field: str, what: str) -> None:
    if path is None:
        raise ValueError(f"{field} is required here: expected the path of {what}")
    if not path.is_file():
        raise ValueError(f"{field}: file {str(path)!r} does not exist: expected {what}")


class ChannelConfig(Section):
    """Microfluidic channel geometry in the field of view; cells flow along +x."""

    width_um: PositiveFloat = 120.0
    center_y_um: PositiveFloat | None = Field(
        None, description="channel centre line, µm from the image top; default: image centre"
    )
    mean_velocity_mm_s: PositiveFloat = 5.0
    velocity_jitter: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.02, description="relative spread of a cell's velocity around the flow profile"
    )


class SimulationConfig(Section):
    """The simulated flow of cells (used when camera.core is 'sim')."""

    seed: int = 0
    cell_rate_hz: PositiveFloat = 100.0
    ctc_fraction: Fraction = 0.05
    wbc_diameter_um: tuple[PositiveFloat, NonNegativeFloat] = Field(
        (11.5, 1.0), description="mean and standard deviation"
    )
    ctc_diameter_um: tuple[PositiveFloat, NonNegativeFloat] = Field(
        (11.5, 2.2), description="mean and standard deviation"
    )
    debris_rate_hz: NonNegativeFloat = 5.0
    doublet_fraction: Fraction = Field(
        0.03, description="fraction of cells that arrive touching a second cell"
    )
    focus_offset_um: float = Field(
        1.5, description="objective focus above (+) or below (-) the cells: sets the halo"
    )
    illumination: Annotated[float, Field(gt=0, le=1)] = Field(
        0.6, description="background brightness at the field centre, fraction of full scale"
    )
    read_noise: NonNegativeFloat = Field(3.0, description="camera read noise, counts rms")
    fluorescence: bool = Field(
        False, description="also render a CTC-marker fluorescence channel for the same cells"
    )


class SegmentationConfig(Section):
    """Finding cells in a frame: the paper's edge → Otsu → fill → open → watershed recipe.

    Lengths are in µm and converted with the camera's pixel size, so one config works at any
    magnification. Defaults were chosen by cross-validation on the BBBC030 DIC images.
    """

    method: Literal["realtime", "reference"] = "realtime"
    min_diameter_um: PositiveFloat = Field(
        5.5, description="smaller blobs are debris. Leukocytes are 7 µm and up, but CTCs "
        "spread wider in size (Wang et al. 2020, Fig. 3e): at 6 µm, 9 of the 2,478 CTCs of "
        "eight 60 s simulated scenes (5.75-6.2 µm) were never tracked. Debris that passes is "
        "seen in few frames: see tracking.small_track_um. At 5 µm simulated debris (measured "
        "5.0-5.5 µm with its halo) passed and was sorted as CTC"
    )
    max_diameter_um: PositiveFloat = 30.0
    crop_size: PositiveInt = 30
    edge_smooth_um: PositiveFloat = Field(
        2.5, description="box filter on the gradient image, so a cell's edges join into one blob"
    )
    otsu_scale: PositiveFloat = Field(
        0.6, description="edge threshold = this × Otsu's threshold on the smoothed gradient"
    )
    min_edge_snr: NonNegativeFloat = Field(
        6.0, description="edge threshold at least median + this × robust sigma of the gradient"
    )
    opening_um: PositiveFloat = Field(2.0, description="opening diameter that removes debris")
    halo_um: NonNegativeFloat = Field(
        1.3, description="erosion after opening: the gradient mask spills this far past the cell"
    )
    split_below_solidity: Fraction = Field(
        0.9, description="realtime: only blobs less solid than this are tried for a split"
    )
    split_depth: Fraction = Field(
        0.35, description="watershed seeds: distance maxima at least this × the blob's maximum high"
    )
    flow_split_eccentricity: Fraction = Field(
        0.75, description="live flow: blobs more eccentric than this are tried for a split "
        "too (cells in suspension are round, so an elongated blob is several cells)"
    )
    flow_split_depth: Fraction = Field(
        0.1, description="live flow: split_depth for the blobs that are not single-cell shaped"
    )
    max_aspect: PositiveFloat = Field(
        3.0, description="longer/shorter axis above this: a wall edge or streak, not a cell"
    )
    background_frames: PositiveInt = Field(
        15, description="frames whose median starts the flow background model"
    )
    background_every: PositiveInt = Field(
        4, description="update the flow background model with one frame in this many"
    )
    background_step: PositiveFloat = Field(
        0.25, description="largest background change per update, in units of the noise sigma"
    )
    min_solidity: Fraction = Field(0.85, description="single-cell flag: at least this solid")
    max_eccentricity: Fraction = Field(
        0.75,
        description="single-cell flag: at most this eccentric (BBBC030: single cells ~0.45, "
        "touching pairs 0.8 and above)",
    )

    @model_validator(mode="after")
    def _diameters_ordered(self) -> SegmentationConfig:
        if self.min_diameter_um >= self.max_diameter_um:
            raise ValueError(
                f"min_diameter_um ({self.min_diameter_um}) must be below "
                f"max_diameter_um ({self.max_diameter_um})"
            )
        return self


class ClassifierConfig(Section):
    model: Path = DEFAULT_MODEL_FILE
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["float32", "int8"] = Field(
        "float32", description="int8: quantised on the CPU (device auto or cpu) from the "
        "calibration crops in the model file; 2-3x the crops/s of float32 for the ResNet-50"
    )
    threshold: Fraction = Field(0.5, description="P(CTC) at or above which a cell is a CTC")
    max_batch: PositiveInt = 64
    max_wait_ms: NonNegativeFloat | None = Field(
        None, description="longest a crop waits for its batch to fill; unset: 10 on the CPU, "
        "2 on a GPU. On the CPU each network call costs ~1-2 ms beyond its crops, so at 200 fps "
        "10 ms (vs 5) saves a fifth of the classifier's CPU; on a GPU a call costs the host "
        "little, and 2 ms (vs 10) took end-to-end p99 from 22-25 to 13 ms at 200 fps"
    )
    threads: Annotated[int, Field(ge=0)] = Field(
        1, description="torch CPU threads for inference (0: torch's default); one is far "
        "steadier than two on a 2-core machine that also segments"
    )
    nice: Annotated[int, Field(ge=0, le=19)] = Field(
        10, description="how far below the hot path (camera, segmentation, decision, sorter) "
        "the classifier thread runs (Linux nice; 0: equal). A score is needed before its cell "
        "reaches the sorter, 100+ ms away, not within a frame: on a saturated 2-core machine "
        "at 200 fps, 45 s, three runs side by side, 292-501 frames dropped and 2-5 late "
        "decisions at equal priority against 92-173 and none at 10"
    )

    _resolve_paths = field_validator("model")(_resolve)


class TrackingConfig(Section):
    """Linking detections into tracks and deciding once per cell."""

    max_missed_frames: Annotated[int, Field(ge=0)] = 1
    max_hidden_frames: Annotated[int, Field(ge=0)] = Field(
        20, description="frames a track may coast along its fitted line while its predicted "
        "centre is inside another detection (touching cells segment as one blob)"
    )
    link_tolerance_um: PositiveFloat = Field(
        6.0, description="largest distance between a track's predicted and observed position"
    )
    fit_max_eccentricity: Fraction = Field(
        0.6, description="more eccentric detections are linked but not fitted: a neighbour "
        "merged into the blob pulls the centroid by µm (simulator: single cells ≤0.63 at p99)"
    )
    min_observations: PositiveInt = Field(
        4, description="crops needed before deciding early (3: a few more CTCs decided WBC; "
        "see README, Evidence and decision)")
    max_crops_per_track: PositiveInt = 8
    uncertain_margin: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        0.15, description="P(CTC) within this distance of the threshold: uncertain"
    )
    min_track_length: PositiveInt = Field(
        2, description="detections a track needs to count as a cell (shorter: noise)"
    )
    small_track_um: NonNegativeFloat = Field(
        7.0, description="a track whose median diameter is below this (smaller than any "
        "leukocyte) needs min_small_track_length detections to count as a cell: debris near "
        "segmentation.min_diameter_um is found in a frame or two of its crossing, a cell in "
        "most. 0: off"
    )
    min_small_track_length: PositiveInt = Field(
        4, description="detections a track smaller than small_track_um needs (see there)"
    )
    evidence_timeout_ms: PositiveFloat = Field(
        200.0, description="after a track ends, how long to wait for its crops' scores"
    )
    decide_margin_um: NonNegativeFloat = Field(
        20.0, description="decide once a cell is this close to leaving the field"
    )


class EmulatorConfig(Section):
    """The sorter controller emulator (sorter.port: emulator)."""

    latency_us: NonNegativeFloat = Field(1000.0, description="one-way serial latency, mean")
    jitter_us: NonNegativeFloat = Field(
        500.0, description="one-way latency spread: uniform within latency_us ± jitter_us"
    )
    clock_offset_us: NonNegativeFloat = Field(
        10_000_000.0, description="the controller clock's reading when the emulator starts"
    )
    drift_ppm: Annotated[float, Field(ge=-500, le=500)] = Field(
        50.0, description="the controller clock's rate error against the host's"
    )
    pulse_jitter_us: NonNegativeFloat = Field(
        20.0, description="pulse start lateness, uniform 0..this (a timer never fires early)"
    )


class SorterConfig(Section):
    enabled: bool = Field(True, description="false: count only, never fire")
    port: str = Field("emulator", description="serial port path, or 'emulator'")
    baudrate: PositiveInt = 115200
    sort_distance_um: PositiveFloat = Field(
        1500.0, description="from the image's left edge (x=0) to the sorting region's centre"
    )
    pulse_margin_us: NonNegativeFloat = Field(
        120.0,
        description="time the pulse covers on each side of the predicted crossing: the "
        "controller's own timing error (clock sync, timer; measured with the emulator: starts "
        "within -62..+69 µs of target, p1-p99, on an idle host; -113..+77 µs under the live "
        "pipeline at 200 fps)",
    )
    pulse_margin_um: NonNegativeFloat = Field(
        0.4,
        description="travel the pulse covers on each side on top of pulse_margin_us: a cell's "
        "centroid is off its centre by its shape (simulator, median / p90: WBCs 0.08 / 0.21 "
        "µm, CTCs 0.11 / 0.32 µm), and a trusted line is off by a few tenths of a µm at the "
        "sorter. Offline, eight 60 s scenes, recovery / purity: 0.2 µm 0.940 / 0.933, 0.3 "
        "0.942 / 0.930, 0.4 0.945 / 0.926, 0.5 0.945 / 0.923, 0.6 0.945 / 0.920",
    )
    pulse_sigmas: NonNegativeFloat = Field(
        2.0,
        description="for a track whose line is not trusted (few points, or a neighbour "
        "touching its cell), the standard errors of its predicted position at the sorter "
        "that the pulse covers on each side as well; longer pulses deflect more bystanders",
    )
    pulse_max_half_um: PositiveFloat = Field(
        3.0,
        description="most travel a pulse covers on each side of the predicted crossing: a "
        "track too uncertain for it gets this much, not a pulse that deflects its neighbours",
    )
    widen_sigmas: NonNegativeFloat = Field(
        4.0,
        description="an untrusted track's pulse is widened further, up to this many standard "
        "errors on each side, wherever no other cell (not decided a CTC) is predicted to "
        "cross: its line is often further off than its standard error says, and a longer "
        "pulse there deflects no known bystander. At least pulse_sigmas; equal: off",
    )
    widen_max_half_um: PositiveFloat = Field(
        8.0, description="most travel a widened pulse covers on each side of the predicted "
        "crossing; at least pulse_max_half_um"
    )
    coincidence: Literal["centroid", "span"] = Field(
        "centroid",
        description="the pulse for a CTC whose blob holds two cells overlapping in the image "
        "(the two cells' lines part on the way to the sorter) not told apart by "
        "each cell's own crops (those that are get a pulse on the CTC): 'centroid' aims at "
        "the blob's centroid, between the two cells, and often misses both (purity first); "
        "'span' covers both cells and deflects the other one too (recovery first). "
        "Simulator, 200 fps, three 60 s scenes, before end crops: recovery 0.831-0.898 "
        "against 0.868-0.916, purity 0.925-0.946 against 0.911-0.922",
    )
    span_max_um: PositiveFloat = Field(
        25.0, description="most travel a 'span' pulse covers, centred on the blob's centroid"
    )
    min_pulse_us: PositiveFloat = 200.0
    max_pulse_us: PositiveFloat = 20_000.0
    min_lead_ms: PositiveFloat = Field(
        5.0, description="a pulse due sooner than this is a late decision and is not sent"
    )
    reply_timeout_ms: PositiveFloat = 500.0
    ping_interval_ms: Annotated[float, Field(gt=0, le=500)] = Field(
        50.0,
        description="one clock-sync exchange with the controller per this interval: the "
        "clock model keeps the fastest trips of the last seconds, and more exchanges find "
        "faster ones, at the cost of a thread wake-up each (see README, Sorter trigger); at "
        "most 500, a quarter of the controller's 2 s watchdog",
    )
    emulator: EmulatorConfig = EmulatorConfig()

    @model_validator(mode="after")
    def _widths_ordered(self) -> SorterConfig:
        if self.min_pulse_us > self.max_pulse_us:
            raise ValueError(
                f"min_pulse_us ({self.min_pulse_us}) must not exceed max_pulse_us "
                f"({self.max_pulse_us})"
            )
        if self.widen_sigmas < self.pulse_sigmas:
            raise ValueError(
                f"widen_sigmas ({self.widen_sigmas}) must not be below pulse_sigmas "
                f"({self.pulse_sigmas})"
            )
        if self.widen_max_half_um < self.pulse_max_half_um:
            raise ValueError(
                f"widen_max_half_um ({self.widen_max_half_um}) must not be below "
                f"pulse_max_half_um ({self.pulse_max_half_um})"
            )
        return self


# What the frame ring's default leaves for classification and decision (their p99 is ~30 ms),
# and its least size (short hiccups of the machine must not drop frames).
CLASSIFICATION_ALLOWANCE_S = 0.030
MIN_FRAME_QUEUE = 8


class PipelineConfig(Section):
    frame_queue: PositiveInt | None = Field(
        None, description="frames waiting for segmentation: slots of the shared-memory ring "
        "(0.6 MB each at 640×480). Default: the frames in the fastest cell's lead time to the "
        "sorter, less an allowance for classification (24 at the defaults: 120 ms at 200 "
        "fps); an older frame can only give late decisions"
    )
    crop_queue: PositiveInt = Field(1024, description="crops waiting for classification")
    deadline_ms: PositiveFloat = Field(20.0, description="end-to-end latency target per cell")


class StorageConfig(Section):
    # Relative to the working directory, not the config file: runs land where the user works.
    runs_dir: Path = Path("runs")
    commit_interval_s: PositiveFloat = 1.0
    record: bool = Field(False, description="record every frame to the run directory")


class DashboardConfig(Section):
    enabled: bool = Field(True, description="open the window when a display is present")
    refresh_hz: Annotated[float, Field(gt=0, le=30)] = Field(
        10.0, description="window refreshes per second (up to 30): each costs the window's "
        "process ~10 ms of CPU, at 30 Hz a third of a core the pipeline needs on two cores"
    )
    history_s: PositiveFloat = 300.0


class Config(Section):
    name: str = "sim"
    camera: CameraConfig = CameraConfig()
    channel: ChannelConfig = ChannelConfig()
    simulation: SimulationConfig = SimulationConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    tracking: TrackingConfig = TrackingConfig()
    sorter: SorterConfig = SorterConfig()
    pipeline: PipelineConfig = PipelineConfig()
    storage: StorageConfig = StorageConfig()
    dashboard: DashboardConfig = DashboardConfig()

    @model_validator(mode="after")
    def _channel_inside_frame(self) -> Config:
        height_um = self.camera.height * self.camera.pixel_size_um
        if self.channel.width_um > height_um:
            raise ValueError(
                f"channel.width_um ({self.channel.width_um}) is wider than the image "
                f"({height_um:g} µm = camera.height × camera.pixel_size_um)"
            )
        return self

    @property
    def channel_center_um(self) -> float:
        """The channel's centre line, µm from the image top (default: the image's centre)."""
        if self.channel.center_y_um is not None:
            return self.channel.center_y_um
        return self.camera.height * self.camera.pixel_size_um / 2

    def frame_queue_slots(self) -> int:
        """``pipeline.frame_queue``, or its default from the sorter's geometry.

        A frame that waited longer than the fastest cell (the channel's centre line, 1.5 ×
        the mean velocity) takes to go from leaving the field to the sorter can only give
        late decisions. When the machine falls short, a ring longer than that turns dropped
        frames into late decisions: measured at 200 fps on an overloaded run, 64 slots gave
        recovery 0.24, 24 slots 0.73.
        """
        if self.pipeline.frame_queue is not None:
            return self.pipeline.frame_queue
        fastest_um_s = 1.5 * self.channel.mean_velocity_mm_s * 1000
        field_um = self.camera.width * self.camera.pixel_size_um
        lead_s = (self.sorter.sort_distance_um - field_um) / fastest_um_s
        budget_s = lead_s - self.sorter.min_lead_ms / 1000 - CLASSIFICATION_ALLOWANCE_S
        return max(MIN_FRAME_QUEUE, int(budget_s * self.camera.fps))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a config file (default: configs/sim.yaml).

    Raises ConfigError with one message naming the file, each bad field, its value and what
    was expected.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (camera:, sorter:, ...), "
            f"got {type(data).__name__}"
        )
    apply_overrides(data, overrides or {})
    return validate_config(data, source=str(path), base_dir=path.resolve().parent)


def validate_config(data: dict[str, Any], source: str, base_dir: Path | None = None) -> Config:
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set ``{"section.field": value}`` overrides in raw config data, in place."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value


def format_validation_error(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            problems.append(f"  {field}: unknown key (value {err['input']!r}); check the spelling")
        elif err["type"] == "missing":
            problems.append(f"  {field}: required but missing")
        else:
            problems.append(f"  {field}: got {_short(err.get('input'))}: {message}")
    plural = "s" if len(problems) > 1 else ""
    return f"{source}: invalid config ({len(problems)} problem{plural}):\n" + "\n".join(problems)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
