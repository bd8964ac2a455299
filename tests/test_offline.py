"""The decision path offline on a simulated scene, with the real parts: the simulated scene,
the segmenter and tracker, the shipped model in torch, the decision thread's rules."""

import pytest

from ctc_live.classification import load_classifier
from ctc_live.config import load_config
from ctc_live.errors import CtcLiveError
from ctc_live.pipeline.offline import analyse_scene, decide_scene

SECONDS = 3.0


def sim_config(**overrides):
    return load_config(None, overrides=overrides)


@pytest.fixture(scope="module")
def analysis():
    config = sim_config()
    return analyse_scene(config, SECONDS, load_classifier(config.classifier.model, "cpu"))


def test_a_scene_is_decided_and_scored_as_a_live_run(analysis):
    run = decide_scene(sim_config(), analysis)
    truth = run["truth"]
    assert len(analysis.frames) == SECONDS * 200
    assert run["cells"] == run["ctc"] + run["wbc"] + run["uncertain"] > 100
    assert truth["cells"] > 100 and truth["ctc"] > 5
    # Every CTC decided gets its pulse: nothing is late offline.
    assert run["late"] == 0 and run["pulses"] == run["ctc"]
    assert truth["cell_accuracy"] > 0.95 and truth["recovery"] > 0.7
    missed = round((1 - truth["recovery"]) * truth["ctc"])
    assert sum(truth["ctc_missed"].values()) == missed


def test_the_same_scene_gives_the_same_decisions(analysis):
    assert decide_scene(sim_config(), analysis) == decide_scene(sim_config(), analysis)


def test_rules_are_compared_on_the_same_analysis(analysis):
    base = decide_scene(sim_config(), analysis)
    # Sorting off: the same cells, no pulse, nothing deflected.
    counting = decide_scene(sim_config(**{"sorter.enabled": False}), analysis)
    assert counting["cells"] == base["cells"] and counting["ctc"] == base["ctc"]
    assert counting["pulses"] == 0 and counting["truth"]["recovery"] == 0
    # A lower threshold: at least as many CTCs.
    assert decide_scene(sim_config(**{"classifier.threshold": 0.2}), analysis)["ctc"] >= base["ctc"]


def test_a_config_of_another_scene_is_refused(analysis):
    with pytest.raises(CtcLiveError, match="seed 0.*seed 3"):
        decide_scene(sim_config(**{"simulation.seed": 3}), analysis)
