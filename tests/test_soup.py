"""`exporter soup`: finished runs of one network averaged weight by weight, each kept only if validation accuracy
does not drop; the soup is a run that `evaluate` and `export` take, and runs that cannot be averaged are refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from exporter.config import TrainConfig
from exporter.model import build_resnet
from exporter.soup import greedy
from exporter.train import train
from tests.test_exporter_cli import assert_one_line_error, run_cli


def test_greedy_keeps_an_ingredient_only_when_validation_does_not_drop():
    weights = [[np.array([1.0])], [np.array([3.0])], [np.array([-9.0])], [np.array([2.0])]]
    score = {1.0: 0.90, 2.0: 0.95, round(-5.0 / 3, 6): 0.50}  # by the averaged weight's value

    kept, trials = greedy(weights, lambda w: score[round(float(w[0][0]), 6)])
    assert kept == [0, 1, 3]  # 3.0 helps, -9.0 hurts, 2.0 ties (kept: the average is 2.0 again)
    assert [t["kept"] for t in trials] == [True, True, False, True]
    assert trials[2] == {"ingredients": [0, 1, 2], "val_accuracy": 0.50, "kept": False}


@pytest.fixture(scope="module")
def second_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run fine-tuned two more epochs: a second ingredient in the same basin."""
    cfg = TrainConfig.from_json(json.loads((tiny_run / "run.json").read_text())["config"])
    return train(replace(cfg, run_dir=str(tmp_path_factory.mktemp("second")), epochs=2, learning_rate=1e-3,
                         init_from=str(tiny_run / "model.keras")))


def test_the_soup_is_a_run_of_the_kept_runs_mean_weights(tiny_run, second_run, tmp_path):
    out = tmp_path / "soup"
    result = run_cli("soup", "--ingredient", str(tiny_run), "--ingredient", str(second_run), "--run-dir", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    kept = run["soup"]
    assert set(kept) <= {str(tiny_run), str(second_run)} and len(run["soup_trials"]) == 2
    assert run["val_accuracy"] == max(t["val_accuracy"] for t in run["soup_trials"] if t["kept"])
    weights = [keras.saving.load_model(Path(p) / "model.keras", compile=False).get_weights() for p in kept]
    souped = keras.saving.load_model(out / "model.keras", compile=False).get_weights()
    for i, w in enumerate(souped):
        np.testing.assert_allclose(w, np.mean([ws[i] for ws in weights], axis=0), rtol=1e-6, atol=1e-6)
    assert run["temperature"] > 0 and "kept" in result.stderr
    evaluated = run_cli("evaluate", "--run-dir", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    assert (out / "evaluation" / "metrics.json").is_file()


def test_runs_that_cannot_be_averaged_are_refused_in_one_line(tiny_run, second_run, tmp_path):
    out = tmp_path / "soup"
    assert_one_line_error(run_cli("soup", "--ingredient", str(tiny_run), "--run-dir", str(out)), "two different")
    other = tmp_path / "other-split"
    other.mkdir()
    record = json.loads((second_run / "run.json").read_text())
    record["config"]["seed"] = 7
    (other / "run.json").write_text(json.dumps(record))
    result = run_cli("soup", "--ingredient", str(tiny_run), "--ingredient", str(other), "--run-dir", str(out))
    assert_one_line_error(result, "seed", "other images")
    wider = tmp_path / "wider"
    wider.mkdir()
    (wider / "run.json").write_text((second_run / "run.json").read_text())
    build_resnet(3, 32, (8, 16, 32), 1).save(wider / "model.keras")
    result = run_cli("soup", "--ingredient", str(tiny_run), "--ingredient", str(wider), "--run-dir", str(out))
    assert_one_line_error(result, "network differs")
    result = run_cli("soup", "--ingredient", str(tiny_run), "--ingredient", str(tmp_path / "nowhere"),
                     "--run-dir", str(out))
    assert_one_line_error(result, "nowhere", "run.json")
    result = run_cli("soup", "--ingredient", str(tiny_run), "--ingredient", str(second_run), "--run-dir",
                     str(tiny_run))
    assert_one_line_error(result, "already holds a run")
    assert not out.exists()
