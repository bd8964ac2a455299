"""Classifier networks, model files and inference."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ctc_live.classification import (
    BatchClassifier,
    ModelFileError,
    build_network,
    load_classifier,
    prepare,
    save_model,
)
from ctc_live.classification.modelfile import card_path, load_init_weights, load_model
from ctc_live.classification.networks import normalisation_card
from ctc_live.classification.quantisation import CALIBRATION_KEY, calibration_crops
from ctc_live.config import DEFAULT_MODEL_FILE, load_config
from ctc_live.errors import ConfigError, CtcLiveError


def torchvision_resnet50_shapes() -> dict[str, tuple]:
    """torchvision.models.resnet50's state-dict keys and shapes, written from the architecture
    (He et al. 2016; torchvision's Bottleneck with the stride on the 3×3 conv)."""
    shapes: dict[str, tuple] = {}

    def bn(prefix: str, n: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (n,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for layer, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


def test_resnet50_body_has_torchvision_keys_and_shapes():
    expected = {k: v for k, v in torchvision_resnet50_shapes().items() if not k.startswith("fc.")}
    state = build_network("resnet50").state_dict()
    ours = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("fc.")}
    assert ours == expected
    assert len(expected) == 318  # torchvision's 320 minus fc.weight and fc.bias
    assert [k for k in state if k.startswith("fc.")] == [
        "fc.0.weight", "fc.0.bias", "fc.3.weight", "fc.3.bias"]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_checkpoint_loads_into_body(tmp_path, suffix):
    gen = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(s, generator=gen) if s else torch.tensor(7))
             for k, s in torchvision_resnet50_shapes().items()}
    path = tmp_path / f"resnet50{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    model = build_network("resnet50")
    load_init_weights(model, path)
    loaded = model.state_dict()
    assert torch.equal(loaded["layer3.5.conv2.weight"], state["layer3.5.conv2.weight"])
    assert torch.equal(loaded["layer1.0.downsample.1.running_var"],
                       state["layer1.0.downsample.1.running_var"])
    assert loaded["fc.3.weight"].shape == (2, 256)  # our head, untouched


def test_mismatched_checkpoint_lists_missing_and_unexpected(tmp_path):
    state = {k: torch.zeros(s) for k, s in torchvision_resnet50_shapes().items()}
    del state["layer4.2.bn3.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError) as err:
        load_init_weights(build_network("resnet50"), path)
    msg = str(err.value)
    assert "missing keys (1): layer4.2.bn3.weight" in msg
    assert "unexpected keys (1): layer5.0.conv1.weight" in msg
    assert "conv1.weight (64, 1, 7, 7)" in msg


class Payload:
    pass


def test_pickled_non_tensor_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Payload()}, path)  # unpickling this would run our code
    with pytest.raises(CtcLiveError, match="cannot read init weights"):
        load_init_weights(build_network("resnet50"), path)


def _compact_model(tmp_path, name="m", calibration=None):
    torch.manual_seed(0)
    model = build_network("compact").eval()
    # BatchNorm statistics away from their defaults, so folding them is really exercised.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{name}.safetensors"
    save_model(model, path, {"architecture": "compact", "input_size": 32,
                             "normalisation": normalisation_card("compact", False)},
               calibration)
    return model, path


def test_saved_model_predicts_like_the_network_and_ignores_intensity_scale(tmp_path):
    model, path = _compact_model(tmp_path)
    clf = load_classifier(path, device="cpu")
    assert clf.card["architecture"] == "compact" and clf.threshold == 0.5
    rng = np.random.default_rng(0)
    crops = rng.normal(0, 1, (20, 30, 30)).astype(np.float32)
    p = clf.predict(crops)
    assert p.shape == (20,) and p.dtype == np.float32
    with torch.inference_mode():
        ref = torch.softmax(model(prepare(crops, 32)), 1)[:, 1].numpy()
    np.testing.assert_allclose(p, ref, atol=1e-5)
    # The same cells as 16-bit and 8-bit files would hold them: an affine change of intensity.
    as16 = np.round((crops - crops.min()) * 3000).astype(np.uint16)
    np.testing.assert_allclose(clf.predict(as16), p, atol=2e-3)
    as8 = np.round((crops - crops.min()) / (crops.max() - crops.min()) * 255).astype(np.uint8)
    np.testing.assert_allclose(clf.predict(as8), p, atol=0.05)
    # Crops of other sizes are resized; a list of mixed sizes works.
    mixed = [rng.normal(0, 1, (40, 40)), rng.normal(0, 1, (25, 31)), crops[0], crops[1]]
    np.testing.assert_allclose(
        clf.predict(mixed), [clf.predict([m])[0] for m in mixed], atol=1e-5)
    np.testing.assert_allclose(clf.predict(mixed)[2:], p[:2], atol=1e-5)
    assert clf.predict([]).shape == (0,)
    assert clf.predict(np.zeros((0, 30, 30), np.float32)).shape == (0,)


def test_card_records_normalisation_and_provenance(tmp_path):
    _, path = _compact_model(tmp_path)
    card = json.loads(card_path(path).read_text())
    for key in ("architecture", "input_size", "normalisation", "classes", "threshold", "date",
                "ctc_live_version", "weights_sha256"):
        assert key in card
    assert card["classes"] == ["WBC", "CTC"]
    assert "per crop" in card["normalisation"]["standardise"]


def test_bad_model_files_are_refused_clearly(tmp_path):
    _, path = _compact_model(tmp_path)
    good = path.read_bytes()
    with pytest.raises(ModelFileError, match="model file not found"):
        load_classifier(tmp_path / "nope.safetensors")

    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelFileError, match="corrupted or truncated"):
        load_classifier(path)

    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_classifier(path)

    flipped = bytearray(good)
    flipped[-10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ModelFileError, match="do not match the card"):
        load_classifier(path)

    path.write_bytes(good)
    card = card_path(path)
    text = card.read_text()
    card.write_text(text[:40])
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_classifier(path)

    meta = json.loads(text)
    card.write_text(json.dumps(meta | {"architecture": "vgg16"}))
    with pytest.raises(ModelFileError, match="unknown architecture 'vgg16'"):
        load_classifier(path)

    card.write_text(json.dumps(meta | {"architecture": "resnet50", "input_size": 34}))
    with pytest.raises(ModelFileError, match="missing keys .*conv1.weight"):
        load_classifier(path)

    card.unlink()
    with pytest.raises(ModelFileError, match="model card not found"):
        load_classifier(path)


def test_batch_classifier_batches_and_stamps(tmp_path):
    _, path = _compact_model(tmp_path)
    clf = load_classifier(path, device="cpu")
    stage = BatchClassifier(clf, max_batch=8, max_wait_ms=5.0).start()
    rng = np.random.default_rng(1)
    crops = rng.normal(0, 1, (30, 30, 30)).astype(np.float32)
    try:
        for i, c in enumerate(crops):
            assert stage.submit(("frame", i), c)
        results = []
        while len(results) < len(crops):
            batch = stage.results.get(timeout=5)
            assert len({r.batch_size for r in batch}) == 1 and len(batch) == batch[0].batch_size
            results += batch
    finally:
        stage.stop()
    assert sorted(r.key[1] for r in results) == list(range(30))
    assert all(1 <= r.batch_size <= 8 for r in results)
    assert all(r.done_ns >= r.submitted_ns for r in results)
    expected = clf.predict(crops)
    got = np.array([r.p_ctc for r in sorted(results, key=lambda r: r.key[1])])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert stage.stats.crops == 30 and stage.stats.dropped_in == 0


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice is Linux's")
def test_the_classifier_thread_runs_niced_and_the_rest_of_the_process_does_not(tmp_path):
    def nice_of(tid: int) -> int:
        # /proc/<pid>/task/<tid>/stat: field 19 is the nice value (after the "(name)" field).
        return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])

    _, path = _compact_model(tmp_path)
    stage = BatchClassifier(load_classifier(path, device="cpu"), nice=7).start()
    try:
        stage.submit("one", np.zeros((30, 30), np.float32))
        stage.results.get(timeout=5)  # the thread is past its start
        base = nice_of(threading.get_native_id())
        assert nice_of(stage._thread.native_id) == min(base + 7, 19)
    finally:
        stage.stop()
    assert nice_of(threading.get_native_id()) == base


def test_drain_classifies_everything_submitted_into_a_shared_queue(tmp_path):
    import queue

    _, path = _compact_model(tmp_path)
    shared: queue.Queue = queue.Queue()
    stage = BatchClassifier(load_classifier(path, device="cpu"), max_batch=4, results=shared)
    for i in range(10):
        stage.submit(i, np.zeros((30, 30), np.float32))
    stage.start().drain()
    keys = []
    while not shared.empty():
        keys += [r.key for r in shared.get_nowait()]
    assert sorted(keys) == list(range(10)) and stage.stats.batches >= 3


def test_batch_classifier_counts_drops_when_full(tmp_path):
    _, path = _compact_model(tmp_path)
    stage = BatchClassifier(load_classifier(path, device="cpu"), queue_size=4)  # not started
    accepted = [stage.submit(i, np.zeros((30, 30), np.float32)) for i in range(6)]
    assert accepted == [True] * 4 + [False] * 2
    assert stage.stats.dropped_in == 2


def test_a_lossless_batch_classifier_holds_the_submitter_back_while_it_runs(tmp_path):
    """Lossless (a replay at full speed): a full queue makes ``submit`` wait for room
    instead of dropping, and every crop is scored; once the classifier has stopped, a full
    queue drops again rather than hold the stream for ever."""
    import queue

    _, path = _compact_model(tmp_path)
    stage = BatchClassifier(load_classifier(path, device="cpu"), max_batch=2, queue_size=2,
                            results=queue.Queue(), lossless=True).start()
    crop = np.zeros((30, 30), np.float32)
    try:
        accepted = [stage.submit(i, crop) for i in range(20)]
        keys = []
        while len(keys) < 20:
            keys += [r.key for r in stage.results.get(timeout=5)]
    finally:
        stage.stop()
    assert all(accepted) and sorted(keys) == list(range(20)) and stage.stats.dropped_in == 0
    assert [stage.submit(i, crop) for i in range(3)] == [True, True, False]
    assert stage.stats.dropped_in == 1


def _lone_crop_stage(tmp_path, max_wait_ms: float) -> BatchClassifier:
    _, path = _compact_model(tmp_path)
    return BatchClassifier(load_classifier(path, device="cpu"), max_batch=64,
                           max_wait_ms=max_wait_ms).start()


def test_a_lone_crop_waits_no_longer_than_max_wait(tmp_path):
    stage = _lone_crop_stage(tmp_path, max_wait_ms=20.0)
    try:
        stage.submit("only", np.zeros((30, 30), np.float32))
        [r] = stage.results.get(timeout=5)
    finally:
        stage.stop()
    assert r.key == "only" and r.batch_size == 1
    assert (r.done_ns - r.submitted_ns) / 1e6 < 2000  # closed by the wait, not by a full batch


def test_the_batch_window_defaults_by_the_classifier_device(tmp_path):
    """Unset, the window is long on the CPU (each call's CPU is scarce) and short on a GPU
    (a call costs the host little, and the window is latency)."""
    _, path = _compact_model(tmp_path)
    clf = load_classifier(path, device="cpu")
    assert BatchClassifier(clf).max_wait_ns == 10_000_000
    assert BatchClassifier(clf, max_wait_ms=0.5).max_wait_ns == 500_000
    clf.device = torch.device("cuda")  # only the window is looked at: no GPU needed
    assert BatchClassifier(clf).max_wait_ns == 2_000_000
    # Any object with a ``predict`` is a classifier to the stage (a test double, say).
    assert BatchClassifier(SimpleNamespace(predict=clf.predict)).max_wait_ns == 10_000_000


def test_flush_closes_the_batch_without_waiting_out_its_window(tmp_path):
    stage = _lone_crop_stage(tmp_path, max_wait_ms=3000.0)
    try:
        stage.submit("warm", np.zeros((30, 30), np.float32))
        stage.results.get(timeout=10)  # after its 3 s window: torch is warm now
        stage.submit("due", np.zeros((30, 30), np.float32))
        stage.flush()
        [r] = stage.results.get(timeout=5)
    finally:
        stage.stop()
    assert r.key == "due" and (r.done_ns - r.submitted_ns) / 1e6 < 1000


def test_cuda_requested_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _, path = _compact_model(tmp_path)
    with pytest.raises(CtcLiveError, match="no CUDA GPU"):
        load_classifier(path, device="cuda")


def test_grey_crops_feed_the_resnet_stem_with_imagenet_statistics():
    card = normalisation_card("resnet50", imagenet=True)
    crops = np.random.default_rng(3).normal(100, 20, (50, 30, 30))
    x = prepare(crops, 34, card)
    assert x.shape == (50, 3, 34, 34)
    # A standardised grey crop becomes grey pixels of mean 0.45 and spread 0.225, then
    # ImageNet-normalised per channel, as torchvision's pretrained weights expect.
    grey = x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor(
        [0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert torch.allclose(grey.mean(dim=(2, 3)), torch.full((50, 3), 0.45), atol=1e-4)
    assert torch.allclose(grey[:, 0], grey[:, 2], atol=1e-5)  # replicated channels
    assert normalisation_card("resnet50", imagenet=False)["channel_affine"] == [[1.0, 0.0]] * 3


def test_int8_calls_cells_like_float32_on_the_shipped_model():
    _, _, calibration = load_model(DEFAULT_MODEL_FILE)
    # Crops like the training set's but not the ones calibrated on: its crops turned by 90°.
    crops = np.rot90(calibration[:, 0].float().numpy(), 1, axes=(1, 2)).copy()
    p32 = load_classifier(DEFAULT_MODEL_FILE, "cpu").predict(crops)
    int8 = load_classifier(DEFAULT_MODEL_FILE, "cpu", "int8")
    p8 = int8.predict(crops)
    assert int8.precision == "int8" and int8.device.type == "cpu"
    # int8 rounds every activation to 1/128 of its calibrated range, which moves P(CTC) most
    # where the logits are close. On the 2000-crop held-out simulated set 7 calls changed and
    # 99% of P(CTC) moved less than 0.08; here 1 call of 256, mean shift 0.002, largest 0.15.
    assert np.mean((p8 >= 0.5) == (p32 >= 0.5)) >= 0.98
    assert np.abs(p8 - p32).mean() < 0.01 and np.abs(p8 - p32).max() < 0.3
    assert 0.3 < np.mean(p32 >= 0.5) < 0.7  # both classes are in the set
    with pytest.raises(CtcLiveError, match="features need the float32 network"):
        int8.features(crops[:2])


def test_int8_without_calibration_crops_is_refused_clearly(tmp_path):
    _, path = _compact_model(tmp_path)
    with pytest.raises(ModelFileError) as err:
        load_classifier(path, "cpu", "int8")
    msg = str(err.value)
    assert str(path) in msg and "no calibration crops" in msg and "ctc-live train" in msg
    assert f"ctc-live calibrate --model {path}" in msg and "float32" in msg
    with pytest.raises(CtcLiveError, match="unknown classifier precision 'int4'"):
        load_classifier(path, "cpu", "int4")


def test_int8_runs_on_the_cpu_only(tmp_path):
    _, path = _compact_model(tmp_path, calibration=torch.randn(8, 1, 32, 32))
    with pytest.raises(CtcLiveError, match="int8 runs on the CPU only"):
        load_classifier(path, "cuda", "int8")


def test_calibration_crops_round_trip_without_upsetting_key_checks(tmp_path):
    calibration = torch.randn(16, 1, 32, 32).half()
    _, path = _compact_model(tmp_path, calibration=calibration)
    model, card, loaded = load_model(path)
    assert torch.equal(loaded, calibration)
    assert card["calibration"] == {"crops": 16, "source": "training data",
                                   "tensor": CALIBRATION_KEY}
    # A network that does not match is still refused, and the crops are not to blame.
    meta = json.loads(card_path(path).read_text())
    card_path(path).write_text(json.dumps(meta | {"architecture": "resnet50", "input_size": 34}))
    with pytest.raises(ModelFileError, match="missing keys") as err:
        load_model(path)
    assert CALIBRATION_KEY not in str(err.value)
    # Crops of the wrong size, or a weight the network lacks, are refused by name.
    for name, extra, expected in (
        (CALIBRATION_KEY, torch.zeros(4, 1, 30, 30),
         r"calibration\.crops has shape \(4, 1, 30, 30\), expected \(N, 1, 32, 32\)"),
        ("fc.9.weight", torch.zeros(2), r"unexpected keys \(1\): fc\.9\.weight"),
    ):
        save_file(model.state_dict() | {name: extra}, str(path))
        card_path(path).write_text(json.dumps(meta | {"weights_sha256": _sha256(path)}))
        with pytest.raises(ModelFileError, match=expected):
            load_model(path)
    # Saving again without crops drops them and their card entry.
    save_model(model, path, card)
    assert load_model(path)[2] is None and "calibration" not in load_model(path)[1]


def test_calibration_crops_take_both_classes_even_when_one_is_rare():
    rng = np.random.default_rng(0)
    crops = [rng.normal(0, 1, (30, 30)) for _ in range(100)]
    labels = np.array([1] * 10 + [0] * 90)
    picked = calibration_crops(crops, labels, 32, n=40)
    assert picked.shape == (40, 1, 32, 32) and picked.dtype == torch.float16
    every = prepare(crops, 32).half()
    index = [int(torch.nonzero((every == c).flatten(1).all(1))[0]) for c in picked]
    assert len(set(index)) == 40 and sum(labels[index]) == 10  # every CTC, then WBCs


def test_config_precision(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("classifier:\n  precision: int8\n")
    assert load_config(path).classifier.precision == "int8"
    path.write_text("classifier:\n  precision: int4\n")
    with pytest.raises(ConfigError, match=r"classifier\.precision.*'int4'.*'float32' or 'int8'"):
        load_config(path)


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
