"""Training survives an interruption: a run cut mid-epoch and resumed ends with the same weights, optimizer state
and history as an uncut one; checkpoints never leave a half-written file; resume refuses what it cannot honour."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from exporter.config import TrainConfig
from exporter.errors import ExporterError
from exporter.model import build_optimizer
from exporter.train import train
from tests.test_exporter_cli import assert_one_line_error, run_cli


class CutDuring(keras.callbacks.Callback):
    """Stands in for a kill: raises in the middle of an epoch, after the previous epoch's checkpoint."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.cut_epoch, self.cut_batch, self.epoch = epoch, batch, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.cut_epoch and batch == self.cut_batch:
            raise KeyboardInterrupt


def tiny_config(data, run_dir) -> TrainConfig:
    # warm-up, cosine decay and dropout all on: each is a state a resume could get wrong
    return TrainConfig(data=str(data), run_dir=str(run_dir), epochs=4, batch_size=16, input_size=32, widths=(8, 16),
                       blocks_per_stage=1, warmup_epochs=1, learning_rate=5e-3, dropout=0.3, seed=11)


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    uncut = train(tiny_config(tiny_dataset, tmp_path_factory.mktemp("uncut")))
    cut_cfg = tiny_config(tiny_dataset, tmp_path_factory.mktemp("cut"))
    with pytest.raises(KeyboardInterrupt):
        train(cut_cfg, callbacks=(CutDuring(epoch=2, batch=1),))
    after_cut = json.loads((Path(cut_cfg.run_dir) / "history.json").read_text())
    # a kill in the middle of writing epoch 3's checkpoint would leave this; resume ignores it and clears it away
    (Path(cut_cfg.run_dir) / "checkpoints" / ".tmp-epoch-0003.keras").write_bytes(b"half a zip")
    with pytest.raises(ExporterError, match=re.escape("unfinished run (epoch 2/4): pass --resume")):
        train(cut_cfg)  # a fresh start would throw the first two epochs away
    return uncut, train(cut_cfg, resume=True), after_cut


def test_resumed_run_ends_where_the_uncut_run_does(runs):
    uncut, resumed, _ = runs
    a, b = (keras.saving.load_model(run / "model.keras") for run in (uncut, resumed))
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations) == 4 * 4  # 4 epochs of 4 steps: schedule end
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=0, atol=1e-6)
    for va, vb in zip(a.optimizer.variables, b.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(va), np.asarray(vb), rtol=0, atol=1e-6)
    ha, hb = (json.loads((run / "history.json").read_text()) for run in (uncut, resumed))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(ha[key], hb[key], rtol=1e-6)
        assert len(hb[key]) == 4


def test_history_and_run_record_say_where_the_run_is(runs):
    uncut, resumed, after_cut = runs
    assert after_cut["progress"] == "epoch 2/4" and len(after_cut["loss"]) == 2
    history = json.loads((resumed / "history.json").read_text())
    assert history["progress"] == "epoch 4/4 (resumed)" and history["resumed_at_epochs"] == [2]
    assert json.loads((uncut / "history.json").read_text())["progress"] == "epoch 4/4"
    run = json.loads((resumed / "run.json").read_text())
    assert run["resumed_at_epochs"] == [2] and run["train_seconds"] > 0
    # one complete checkpoint left, no temporary file from an interrupted write
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["epoch-0004.keras"]
    assert not list(resumed.glob(".tmp-*"))


def test_resume_refuses_what_it_cannot_honour(runs, tmp_path):
    _, resumed, _ = runs
    assert_one_line_error(run_cli("train", "--resume", "--run-dir", str(tmp_path)), "no checkpoint", "--resume")
    assert_one_line_error(run_cli("train", "--resume", "--run-dir", str(resumed), "--epochs", "9"),
                          "--epochs (run: 4, given: 9)")
    cfg = TrainConfig.from_json(json.loads((resumed / "run.json").read_text())["config"])
    with pytest.raises(ExporterError, match="learning_rate"):
        train(replace(cfg, learning_rate=1e-3), resume=True)


def test_warmup_longer_than_the_run_is_shortened():
    """Issue 15: `--epochs 1` with two warm-up epochs used to spend the whole run below the peak learning rate."""
    cfg = TrainConfig(data="x", run_dir="y", epochs=1, warmup_epochs=2, learning_rate=2e-3)
    assert cfg.schedule_warmup_epochs == 0
    assert lr_at(cfg, 0) == pytest.approx(2e-3) and lr_at(cfg, 9) < 1e-3
    long = replace(cfg, epochs=40)
    assert long.schedule_warmup_epochs == 2 and lr_at(long, 0) < 1e-4 and lr_at(long, 20) == pytest.approx(2e-3)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int = 10) -> float:
    optimizer = build_optimizer(cfg, steps_per_epoch)
    optimizer.iterations.assign(step)
    return float(optimizer.learning_rate)


def test_weight_decay_spares_batch_norm_and_biases_only():
    """AdamW's decay pulls BN scales and shifts toward zero if they are not excluded; Keras matches the exclusion
    against a variable's own name, so a path fragment like "_bn" silently excluded nothing (versions 1-5)."""
    from exporter.model import build_resnet

    model = build_resnet(3, 32, (8, 16), blocks_per_stage=1)
    optimizer = build_optimizer(TrainConfig(data="x", run_dir="y"), 10)
    optimizer.build(model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert decayed and all(p.endswith("/kernel") for p in decayed)
    assert {v.path for v in model.trainable_variables if v.path.endswith("/kernel")} == decayed
