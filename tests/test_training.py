"""Datasets, the training protocol, reports, evaluation and build-dataset."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import tifffile

from ctc_live.cli import main
from ctc_live.config import Config
from ctc_live.errors import CtcLiveError
from ctc_live.training.build import ChannelMap, build_from_images
from ctc_live.training.dataset import DatasetWriter, read_dataset


def synthetic_cell(label: str, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A bright-field-like 16-bit crop: halo ring and dark body; CTCs larger and grainier."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = rng.normal(8.5 if label == "CTC" else 6.5, 0.8)
    d = np.hypot(xx - rng.normal(0, 1), yy - rng.normal(0, 1))
    img = rng.uniform(1500, 3000) + 150 * rng.standard_normal((size, size))
    grain = 500 * rng.standard_normal((size, size)) if label == "CTC" else 100
    img += np.where(d < r, -700 + grain, 0) + np.where(np.abs(d - r) < 1.5, 1200, 0)
    return np.clip(img, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "cells"
    rng = np.random.default_rng(0)
    writer = DatasetWriter(root)
    for label, n in (("CTC", 30), ("WBC", 70)):  # imbalanced, like real sets
        for i in range(n):
            writer.add(synthetic_cell(label, rng), label, "synthetic", i, (20, 20), 10.0,
                       "synthetic generator")
    writer.close()
    return root


def test_dataset_layout_manifest_and_contact_sheets(synthetic_dataset):
    ds = read_dataset(synthetic_dataset)
    assert ds.counts() == {"WBC": 70, "CTC": 30}
    assert ds.crops[0].dtype == np.uint16 and ds.crops[0].shape == (40, 40)
    rows = list(csv.DictReader((synthetic_dataset / "manifest.csv").open()))
    assert len(rows) == 100 and rows[0]["label_source"] == "synthetic generator"
    assert (synthetic_dataset / rows[0]["crop_file"]).is_file()
    for c in ("CTC", "WBC"):
        assert (synthetic_dataset / f"contact_sheet_{c}.png").stat().st_size > 1000


def test_plain_class_folders_of_any_size_and_depth(tmp_path):
    rng = np.random.default_rng(2)
    for c in ("CTC", "wbc"):
        (tmp_path / c).mkdir()
        cv2.imwrite(str(tmp_path / c / "a.png"), rng.integers(0, 255, (40, 40), np.uint8))
        tifffile.imwrite(tmp_path / c / "b.tif", rng.integers(0, 65535, (33, 27), np.uint16))
    ds = read_dataset(tmp_path)
    assert ds.counts() == {"WBC": 2, "CTC": 2}
    assert {c.shape for c in ds.crops} == {(40, 40), (33, 27)}
    assert ds.label_sources == ["class folder"] * 4


def test_bad_datasets_are_refused(tmp_path):
    with pytest.raises(CtcLiveError, match="not found"):
        read_dataset(tmp_path / "none")
    (tmp_path / "CTC").mkdir()
    with pytest.raises(CtcLiveError, match="missing WBC"):
        read_dataset(tmp_path)
    (tmp_path / "WBC").mkdir()
    with pytest.raises(CtcLiveError, match="no crop images"):
        read_dataset(tmp_path)
    (tmp_path / "CTC" / "x.png").write_bytes(b"not a png")
    cv2.imwrite(str(tmp_path / "WBC" / "y.png"), np.zeros((30, 30), np.uint8))
    with pytest.raises(CtcLiveError, match="x.png: cannot read image"):
        read_dataset(tmp_path)


def test_train_learns_writes_every_report_and_evaluates(synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--data", str(synthetic_dataset), "--model", "compact", "--out",
               str(run), "--folds", "3", "--per-class", "48", "--epochs", "4",
               "--batch-size", "16", "--seed", "3"])
    assert rc == 0
    for name in ("metrics.json", "history.json", "report.md", "learning_curves.png", "roc.png",
                 "tsne.png", "train.log", "model.safetensors", "model.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["folds"]) == 3
    assert metrics["mean"]["accuracy"] > 0.85  # chance: 0.7 (all WBC) or 0.5 balanced
    assert metrics["mean"]["balanced_accuracy"] > 0.8
    assert metrics["mean"]["auc"] > 0.9
    assert {"f1", "confusion", "roc"} <= set(metrics["folds"][0])
    assert metrics["tsne"]["learning_rate"] == 100.0
    report = (run / "report.md").read_text()
    assert "97.5%" in report and "88.4%" in report and str(synthetic_dataset) in report
    card = json.loads((run / "model.json").read_text())
    assert card["training_data"]["per_class"] == {"WBC": 70, "CTC": 30}
    assert card["cv_metrics"]["mean"]["accuracy"] == metrics["mean"]["accuracy"]
    # Every crop (fewer than 256) calibrates int8 inference.
    assert card["calibration"] == {"crops": 100, "source": "training data",
                                   "tensor": "calibration.crops"}
    assert "fold CV" in capsys.readouterr().out

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run / "model.safetensors"), "--data",
                 str(synthetic_dataset), "--out", str(out), "--device", "cpu"]) == 0
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["accuracy"] > 0.85 and (out / "roc.png").is_file()
    assert "balanced accuracy" in capsys.readouterr().out

    out8 = tmp_path / "eval8"
    assert main(["evaluate", "--model", str(run / "model.safetensors"), "--data",
                 str(synthetic_dataset), "--out", str(out8), "--precision", "int8"]) == 0
    evaluated8 = json.loads((out8 / "metrics.json").read_text())
    assert evaluated8["precision"] == "int8"
    assert abs(evaluated8["accuracy"] - evaluated["accuracy"]) <= 0.03  # 3 crops of 100
    assert "int8: accuracy" in capsys.readouterr().out


def test_training_is_deterministic_with_a_seed(synthetic_dataset):
    from ctc_live.training.dataset import read_dataset
    from ctc_live.training.protocol import TrainSettings, fit, prepare_dataset

    ds = read_dataset(synthetic_dataset)
    settings = TrainSettings(model="compact", per_class=24, max_epochs=2)
    x = prepare_dataset(ds, settings)
    a = fit(x, ds.labels, settings, 5, "a")
    b = fit(x, ds.labels, settings, 5, "b")
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]


def test_train_refuses_bad_settings(synthetic_dataset, tmp_path, capsys):
    assert main(["train", "--data", str(synthetic_dataset), "--out", str(tmp_path),
                 "--folds", "1"]) == 2
    assert "folds must be at least 2" in capsys.readouterr().err
    assert main(["train", "--data", str(synthetic_dataset), "--out", str(tmp_path),
                 "--init-weights", "x.pth"]) == 2
    assert "resnet50" in capsys.readouterr().err


def test_build_dataset_from_fluorescence_labels_matches_ground_truth(tmp_path, capsys):
    from ctc_live.simulation import FlowScene

    cfg = Config()
    cfg.simulation.fluorescence = True
    cfg.simulation.ctc_fraction = 0.5
    cfg.simulation.cell_rate_hz = 300
    scene = FlowScene(cfg)
    times = [0.2, 0.3, 0.4]
    paths = []
    for i, t in enumerate(times):
        path = tmp_path / f"field{i}.tif"
        tifffile.imwrite(path, np.stack([scene.render(t), scene.render_fluorescence(t)]))
        paths.append(path)
    out = tmp_path / "ds"
    result = build_from_images(paths, out, ChannelMap.parse("bf=0,marker=1"), cfg)
    printed = capsys.readouterr().out
    assert "CTC (live, marker+)" in printed and "WBC (live, marker-)" in printed
    bins = result["bins"]
    assert bins["CTC (live, marker+)"] >= 5 and bins["WBC (live, marker-)"] >= 5
    agree = total = 0
    for row in csv.DictReader((out / "manifest.csv").open()):
        t = times[int(row["source"][-5])]
        x, y = float(row["centroid_x_px"]) * 0.5, float(row["centroid_y_px"]) * 0.5
        under = [c for c in scene.visible_cells(t)
                 if np.hypot(c.x_um(t) - x, c.y_um - y) < c.diameter_um / 2]
        if len(under) == 1:
            total += 1
            agree += under[0].kind.upper() == row["label"]
    assert total >= 10 and agree / total >= 0.85
    assert (out / "contact_sheet_CTC.png").is_file()


def test_channel_map_errors():
    assert ChannelMap.parse("bf=0,viability=1,marker=2") == ChannelMap(0, 2, 1)
    with pytest.raises(CtcLiveError, match="needs at least bf= and marker="):
        ChannelMap.parse("bf=0")
    with pytest.raises(CtcLiveError, match="expected e.g."):
        ChannelMap.parse("bf=zero,marker=1")


def test_build_dataset_from_the_simulator(tmp_path, capsys):
    out = tmp_path / "sim"
    quick = tmp_path / "quick.yaml"  # a shorter background warm-up keeps the test fast
    quick.write_text("segmentation:\n  background_frames: 8\n")
    assert main(["build-dataset", str(out), "--sim", "8", "--config", str(quick)]) == 0
    assert "8 CTC + 8 WBC crops" in capsys.readouterr().out
    ds = read_dataset(out)
    assert ds.counts() == {"WBC": 8, "CTC": 8}
    assert {c.shape for c in ds.crops} == {(30, 30)} and ds.crops[0].dtype == np.uint16
    assert set(ds.label_sources) == {"simulator ground truth"}
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert all(5 < float(r["diameter_um"]) < 30 for r in rows)
    assert main(["build-dataset", str(out), "--sim", "8"]) == 2  # never overwrites
    assert "not empty" in capsys.readouterr().err


def test_calibrate_adds_crops_so_an_old_model_runs_in_int8(synthetic_dataset, tmp_path, capsys):
    import torch

    from ctc_live.classification import build_network, load_classifier
    from ctc_live.classification.modelfile import load_model, save_model
    from ctc_live.classification.networks import normalisation_card

    torch.manual_seed(0)
    path = tmp_path / "old.safetensors"
    save_model(build_network("compact").eval(), path, {
        "architecture": "compact", "input_size": 32,
        "normalisation": normalisation_card("compact", False)})
    before, _, none = load_model(path)
    assert none is None
    assert main(["calibrate", "--model", str(path), "--data", str(synthetic_dataset)]) == 0
    assert "calibration crops" in capsys.readouterr().out
    after, card, crops = load_model(path)
    assert crops.shape == (100, 1, 32, 32)  # every crop of the 100-crop set
    assert card["calibration"]["crops"] == 100
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(),
                                                   after.state_dict().values()))
    load_classifier(path, "cpu", "int8")  # now accepted
