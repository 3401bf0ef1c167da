"""Training on a GPU machine that has JAX but no TensorFlow, through Keras's JAX backend.

The same network (`model.build_from_config`), optimizer and schedule (`model.build_optimizer`), split and loss as
`exporter train`; the pipeline's augmentations (`pipeline.augment`) are re-expressed as batched JAX ops so that a
whole step, augmentation and teachers included, is one compiled program on the accelerator. A run that takes ten
hours on two CPU cores takes minutes. Distillation here is function matching: the teachers label the very view the
student sees (the CPU trainer's `distill.py` precomputes one target per image instead).

Flow: `pack` (here: the training split's encoded images, one file), `train` (there, `KERAS_BACKEND=jax`, any
number side by side; the epoch count is what fits a wall-clock budget, fixed after the first epoch so the cosine
schedule completes; a checkpoint every epoch, `--resume`), `finish` (here: the temperature on the validation split
and `run.json`, after which `evaluate` and `export` take the run directory like any other).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np

from exporter.config import STATE_FILE, TrainConfig, read_state, require_state, save_model_atomically, write_atomically
from exporter.errors import ExporterError

PACK_KEYS = ("class_names", "labels", "train_index", "offsets", "blob")


def pack(cfg: TrainConfig, out: Path) -> dict:
    """The training split's encoded bytes (no decoding: JPEG is the smallest form) with every label, so the
    accelerator can check it recomputes the same split from the same seed."""
    from exporter.dataset import load_dataset, stratified_split

    data = load_dataset(cfg.data)
    train_index = stratified_split(data.labels, (cfg.val_fraction, cfg.test_fraction), cfg.seed)["train"]
    chunks = [np.frombuffer(data.images[i], np.uint8) for i in train_index]
    offsets = np.cumsum([0] + [len(c) for c in chunks])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, class_names=np.array(data.class_names), labels=data.labels,
                        train_index=train_index, offsets=offsets, blob=np.concatenate(chunks))
    return {"images": len(train_index), "bytes": int(offsets[-1])}


def unpack(path: Path, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 RGB [N, size, size, 3] (decoded as everywhere else: `dataset.decode_images`) and labels of the packed
    training split."""
    from exporter.dataset import decode_images, stratified_split

    with np.load(path) as f:
        packed = {k: f[k] for k in PACK_KEYS}
    expected = stratified_split(packed["labels"], (cfg.val_fraction, cfg.test_fraction), cfg.seed)["train"]
    if not np.array_equal(expected, packed["train_index"]):
        raise ExporterError(f"{path} was packed with another split (seed or fractions): pack it again")
    blob, offsets = packed["blob"], packed["offsets"]
    images = decode_images([blob[a:b].tobytes() for a, b in itertools.pairwise(offsets)], cfg.input_size)
    return images, packed["labels"][packed["train_index"]], [str(c) for c in packed["class_names"]]


def augment(images, key, size: int):
    """`pipeline.augment` on a batch: flips, 90-degree turns, 4-pixel zero pad and random crop, brightness,
    contrast and saturation jitter; uint8 in, float32 0..255 out. Saturation is scaled exactly as in HSV (at fixed
    hue and value every channel moves linearly towards the maximum)."""
    import jax
    import jax.numpy as jnp

    n = images.shape[0]
    k = jax.random.split(key, 7)
    x = images.astype(jnp.float32)
    x = jnp.where(jax.random.bernoulli(k[0], 0.5, (n, 1, 1, 1)), x[:, :, ::-1], x)
    x = jnp.where(jax.random.bernoulli(k[1], 0.5, (n, 1, 1, 1)), x[:, ::-1], x)
    turns = jnp.stack([jnp.rot90(x, t, axes=(1, 2)) for t in range(4)])
    x = turns[jax.random.randint(k[2], (n,), 0, 4), jnp.arange(n)]
    pad = size // 8
    x = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
    corners = jax.random.randint(k[3], (n, 2), 0, pad + 1)
    x = jax.vmap(lambda im, c: jax.lax.dynamic_slice(im, (c[0], c[1], 0), (size, size, 3)))(x, corners)
    x = x + jax.random.uniform(k[4], (n, 1, 1, 1), minval=-0.1 * 255, maxval=0.1 * 255)
    mean = x.mean(axis=(1, 2), keepdims=True)
    x = (x - mean) * jax.random.uniform(k[5], (n, 1, 1, 1), minval=0.85, maxval=1.15) + mean
    value, low = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    factor = jax.random.uniform(k[6], (n, 1, 1, 1), minval=0.85, maxval=1.15)
    factor = jnp.minimum(factor, value / jnp.maximum(value - low, 1e-6))  # saturation clipped at 1, as HSV does
    x = value - factor * (value - x)
    return jnp.clip(x, 0, 255)


def _wait_for_peers(barrier: Path | None, peers: int, name: str) -> None:
    """Side-by-side runs time their steps only once all have compiled, so each sees the others' load."""
    if barrier is None:
        return
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / name).touch()
    while len(list(barrier.iterdir())) < peers:
        time.sleep(0.2)


def train(cfg: TrainConfig, packed: Path, budget_s: float, max_epochs: int, init_seed: int,
          barrier: Path | None = None, peers: int = 1, epochs: int | None = None, stop_after: int | None = None,
          resume: bool = False) -> Path:
    """Train within `budget_s` seconds of wall clock (compilation included) and write `run_dir/{model.keras,
    history.json}`; teachers (`cfg.teachers`, .keras) make it a function-matching distillation. `epochs` fixes the
    count instead of the budget; every epoch ends with a checkpoint, which `resume` continues from (`stop_after`
    ends a run after that epoch, to finish it later: on another lease, say)."""
    import jax
    import jax.numpy as jnp
    import keras

    from exporter.model import build_from_config, build_optimizer, learning_rate_schedule

    if cfg.mixup and not cfg.teachers:
        raise ExporterError("--mixup blends views for teachers to label: pass --teacher too")
    started = time.monotonic()
    done = None if resume else read_state(cfg.run_dir)
    if done and done["epochs_done"] < done["epochs"]:
        raise ExporterError(f"{cfg.run_dir} holds an unfinished run (epoch {done['epochs_done']}/{done['epochs']}): "
                            "pass --resume to continue it, or pick another --run-dir")
    images, labels, class_names = unpack(packed, cfg)
    depth, size, batch = len(class_names), cfg.input_size, min(cfg.batch_size, len(labels))
    keras.utils.set_random_seed(init_seed)
    model = build_from_config(cfg, depth)
    if cfg.init_from and not resume:
        model.set_weights(keras.saving.load_model(cfg.init_from, compile=False).get_weights())
    teachers = [keras.saving.load_model(p, compile=False) for p in cfg.teachers]
    teacher_vars = [([v.value for v in t.trainable_variables], [v.value for v in t.non_trainable_variables])
                    for t in teachers]
    loss_fn = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.0 if teachers else cfg.label_smoothing)
    steps = len(labels) // batch  # whole batches only: one compiled shape
    device_images, device_labels = jnp.asarray(images), jnp.asarray(labels)

    optimizer = build_optimizer(cfg, steps, learning_rate=0.0)  # a variable, set from `schedule` every step
    optimizer.build(model.trainable_variables)
    lr_slot = next(i for i, v in enumerate(optimizer.variables) if v is optimizer._learning_rate)

    def loss_and_updates(trainable, non_trainable, x, y):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, logits), (non_trainable, logits)

    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)

    def step(teacher_vars, carry, inputs):
        (trainable, non_trainable, opt_vars), key = carry
        index, learning_rate = inputs
        key, sub = jax.random.split(key)
        x = augment(device_images[index], sub, size)
        if teachers:
            if cfg.mixup:  # function matching: the teachers label the blend too, so it needs no label rule
                lam = jax.random.beta(jax.random.fold_in(sub, 1), cfg.mixup, cfg.mixup, (x.shape[0], 1, 1, 1))
                x = lam * x + (1 - lam) * x[::-1]
            logits = [t.stateless_call(tv, ntv, x, training=False)[0]
                      for t, (tv, ntv) in zip(teachers, teacher_vars, strict=True)]
            y = jax.nn.softmax(jnp.mean(jnp.stack(logits), axis=0))
        else:
            y = jax.nn.one_hot(device_labels[index], depth)
        (loss, (non_trainable, logits)), grads = grad_fn(trainable, non_trainable, x, y)
        opt_vars = [learning_rate if i == lr_slot else v for i, v in enumerate(opt_vars)]
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        agree = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(y, -1))
        return ((trainable, non_trainable, opt_vars), key), (loss, agree)

    @jax.jit
    def run_epoch(state, key, order, learning_rates, teacher_vars):
        """A whole epoch as one compiled loop: no per-step dispatch from Python."""
        (state, key), (losses, agrees) = jax.lax.scan(partial(step, teacher_vars), (state, key),
                                                      (order, learning_rates))
        return state, key, jnp.mean(losses), jnp.mean(agrees)

    def rates(count: int) -> np.ndarray:
        """The learning rate of every step of a `count`-epoch run."""
        schedule = learning_rate_schedule(replace(cfg, epochs=count), steps)
        return np.asarray(jax.vmap(schedule)(jnp.arange(count * steps)), np.float32)

    state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
             [v.value for v in optimizer.variables])
    rng = np.random.default_rng(init_seed)
    key = jax.random.key(init_seed)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    epoch, seconds, epoch_s = 0, 0.0, float("nan")
    # epoch 1 runs on the warm-up every run of 8+ epochs shares, so its learning rates hold whatever count follows
    planned = epochs or max_epochs
    run_dir = Path(cfg.run_dir)
    if resume:
        record = require_state(run_dir)
        state = _load_state(run_dir / record["checkpoint"], record["sizes"])
        rng.bit_generator.state = record["rng"]
        key = jax.random.wrap_key_data(jnp.asarray(record["key"], jnp.uint32))
        history, epoch, planned = record["history"], record["epochs_done"], record["epochs"]
        seconds, epoch_s = record["train_seconds"], record["epoch_s"]
        print(f"{run_dir}: resuming after epoch {epoch}/{planned}", file=sys.stderr, flush=True)
    lr = rates(planned)
    stopped, compiled = None, None
    while epoch < planned:
        if time.monotonic() - started > budget_s:  # slower than timed (a peer's load grew): keep what there is
            stopped = "budget spent"
            break
        if stop_after is not None and epoch >= stop_after:
            stopped = "stopped as asked"
            break
        epoch_started = time.monotonic()
        order = jnp.asarray(rng.permutation(len(labels))[: steps * batch].reshape(steps, batch))
        args = (state, key, order, jnp.asarray(lr[epoch * steps:(epoch + 1) * steps]), teacher_vars)
        if compiled is None:  # compile first, then wait for the peers: the timed epoch runs under their load
            compiled = run_epoch.lower(*args).compile()
            _wait_for_peers(barrier, peers, run_dir.name)
            epoch_started = time.monotonic()
        state, key, loss, agree = compiled(*args)
        history["loss"].append(float(loss))
        history["accuracy"].append(float(agree))
        seconds += time.monotonic() - epoch_started
        epoch += 1
        record = {"epochs_done": epoch, "history": history, "rng": rng.bit_generator.state,
                  "key": np.asarray(jax.random.key_data(key)).tolist(), "train_seconds": round(seconds, 1),
                  "init_seed": init_seed, "class_names": class_names}
        if epoch == 1:  # an epoch and its checkpoint, timed, fix the epoch count: the cosine decay ends in budget
            _write_checkpoint(run_dir, state, {**record, "epochs": planned, "epoch_s": None,
                                               "config": asdict(replace(cfg, epochs=planned))})
            epoch_s = time.monotonic() - epoch_started
            if not epochs:
                left = budget_s - (time.monotonic() - started) - 20  # saving and slack
                planned = int(max(1, min(max_epochs, 1 + left / (1.1 * epoch_s))))
                lr = rates(planned)
            print(f"{run_dir}: {epoch_s:.2f} s per epoch of {steps} steps: {planned} epochs", file=sys.stderr,
                  flush=True)
        _write_checkpoint(run_dir, state, {**record, "epochs": planned, "epoch_s": epoch_s,
                                           "config": asdict(replace(cfg, epochs=planned))})
    for variable, value in zip(model.trainable_variables + model.non_trainable_variables, state[0] + state[1],
                               strict=True):
        variable.assign(value)
    save_model_atomically(model, run_dir / "model.keras")
    cfg = replace(cfg, epochs=planned)
    cut = f" ({stopped}: --resume finishes it)" if stopped else ""
    record = {"progress": f"epoch {epoch}/{planned}{cut}", "epochs_done": epoch, "epochs": planned,
              "train_seconds": round(seconds, 1), "epoch_s": round(epoch_s, 2), "init_seed": init_seed,
              "device": str(jax.devices()[0].device_kind), "config": asdict(cfg), "class_names": class_names,
              "keras_version": keras.__version__, "jax_version": jax.__version__, **history}
    write_atomically(run_dir / "history.json", json.dumps(record, indent=1))
    print(f"{run_dir}: epoch {epoch}/{planned}{cut} after {seconds:.0f} s of training, last loss "
          f"{history['loss'][-1]:.4f} agreement {history['accuracy'][-1]:.4f}", file=sys.stderr, flush=True)
    return run_dir


def _write_checkpoint(run_dir: Path, state, record: dict) -> None:
    """The epoch's state (weights, batch-norm statistics, dropout's seed, optimizer) to a new file, then the record
    that points at it (history, data order and augmentation RNGs) replaces the old one: the commit point. A cut at
    any instant leaves the previous complete checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{record['epochs_done']:04d}.npz"
    tmp = run_dir / f".tmp-{name}"
    with open(tmp, "wb") as f:
        np.savez(f, *[np.asarray(a) for part in state for a in part])
    os.replace(tmp, run_dir / name)
    write_atomically(run_dir / STATE_FILE,
                     json.dumps({**record, "checkpoint": name, "sizes": [len(part) for part in state]}))
    for old in run_dir.glob("checkpoint-*.npz"):
        if old.name != name:
            old.unlink()


def _load_state(path: Path, sizes: list[int]):
    import jax.numpy as jnp

    with np.load(path) as f:
        flat = [jnp.asarray(f[f"arr_{i}"]) for i in range(sum(sizes))]
    bounds = np.cumsum([0, *sizes])
    return tuple(flat[a:b] for a, b in itertools.pairwise(bounds))


def finish(run_dir: Path, data: str) -> Path:
    """Here, with TensorFlow: `run.json` as `exporter train` ends with it (`train.write_run`)."""
    from exporter.dataset import decode_all, load_dataset
    from exporter.export import load_keras_model
    from exporter.train import split_dataset, write_run

    record = json.loads((run_dir / "history.json").read_text())
    cfg = TrainConfig.from_json(record["config"], data=data, run_dir=str(run_dir))
    dataset = load_dataset(data)
    if dataset.class_names != record["class_names"]:
        raise ExporterError(f"dataset classes {dataset.class_names} differ from the run's {record['class_names']}")
    splits = split_dataset(dataset, cfg)
    write_run(run_dir, load_keras_model(run_dir / "model.keras"), cfg, dataset, splits,
              decode_all(splits["val"], cfg.input_size), train_seconds=record["train_seconds"],
              trained_on=f"{record['device']} (Keras {record['keras_version']}, JAX {record['jax_version']})")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.accelerated", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the training split's encoded images to one .npz")
    p.add_argument("--data", default="../shared/data/eurosat_rgb_trainval.tar.gz")
    p.add_argument("--out", required=True)
    t = sub.add_parser("train", help="train on the accelerator (KERAS_BACKEND=jax)")
    t.add_argument("--packed", required=True)
    t.add_argument("--run-dir", required=True)
    t.add_argument("--budget-s", type=float, required=True, help="wall clock for everything, compilation included")
    t.add_argument("--max-epochs", type=int, default=400)
    t.add_argument("--widths", default="48,96,192")
    t.add_argument("--blocks-per-stage", type=int, default=TrainConfig.blocks_per_stage)
    t.add_argument("--stem-stride", type=int, choices=(1, 2), default=TrainConfig.stem_stride)
    t.add_argument("--input-size", type=int, default=TrainConfig.input_size)
    t.add_argument("--init-seed", type=int, default=1,
                   help="initialisation, order and augmentation; the split stays the project's (seed 1337)")
    t.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    t.add_argument("--teacher", dest="teachers", action="append", default=[])
    t.add_argument("--init-from", default=None)
    t.add_argument("--mixup", type=float, default=0.0,
                   help="with teachers: blend each view with another, Beta(a, a) weights, for the teachers to label")
    t.add_argument("--epochs", type=int, default=None, help="a fixed epoch count instead of what the budget allows")
    t.add_argument("--stop-after-epoch", type=int, default=None,
                   help="end after this epoch's checkpoint, to be finished by --resume (on another lease, say)")
    t.add_argument("--resume", action="store_true", help="continue --run-dir from its last epoch checkpoint, with "
                   "the run's own settings")
    t.add_argument("--barrier", default=None, help="folder where side-by-side runs wait for each other")
    t.add_argument("--peers", type=int, default=1)
    f = sub.add_parser("finish", help="fit the temperature on the validation split and write run.json")
    f.add_argument("--run-dir", required=True)
    f.add_argument("--data", default="../shared/data/eurosat_rgb_trainval.tar.gz")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            print(pack(TrainConfig(data=args.data, run_dir=""), Path(args.out)))
        elif args.command == "train":
            if os.environ.get("KERAS_BACKEND") != "jax":
                raise ExporterError("set KERAS_BACKEND=jax: this trainer runs Keras on JAX")
            cfg = TrainConfig(data=args.packed, run_dir=args.run_dir, widths=tuple(map(int, args.widths.split(","))),
                              blocks_per_stage=args.blocks_per_stage, stem_stride=args.stem_stride,
                              input_size=args.input_size,
                              learning_rate=args.learning_rate, teachers=tuple(args.teachers),
                              init_from=args.init_from, mixup=args.mixup)
            init_seed = args.init_seed
            if args.resume:  # the run's own settings: a changed flag would change what the first part trained
                record = require_state(args.run_dir)
                cfg = TrainConfig.from_json(record["config"], data=args.packed, run_dir=args.run_dir)
                init_seed = record["init_seed"]
            train(cfg, Path(args.packed), args.budget_s, args.max_epochs, init_seed,
                  Path(args.barrier) if args.barrier else None, args.peers, args.epochs, args.stop_after_epoch,
                  args.resume)
        else:
            print(finish(Path(args.run_dir), args.data))
    except ExporterError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
