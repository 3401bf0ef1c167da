"""`python -m exporter train|evaluate|export|all`: one line on stderr and exit 2 for anything a user must fix."""

from __future__ import annotations

import argparse
import os
import sys

from exporter.config import TrainConfig

# TensorFlow C++ logs (e.g. "failed call to cuInit") would break the one-line error contract.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULTS = TrainConfig(data="../shared/data/eurosat_rgb_trainval.tar.gz", run_dir="runs/eurosat")


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 32,64,128, got {text!r}") from None
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError("need at least two positive stage widths, like 32,64,128")
    return widths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m exporter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def run_dir(p):
        p.add_argument("--run-dir", default=DEFAULTS.run_dir,
                       help="where training writes model.keras (default %(default)s)")

    d = DEFAULTS
    t = sub.add_parser("train", help="train a ResNet from scratch on a folder-per-class dataset")
    t.add_argument("--data", default=d.data, help="a class-per-folder directory or a .tar.gz of one")
    run_dir(t)
    t.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    t.add_argument("--input-size", type=int, default=d.input_size, help="square input side in pixels (%(default)s)")
    t.add_argument("--widths", type=_widths, default=d.widths,
                   help=f"filters per stage; their count sets the depth (default {','.join(map(str, d.widths))})")
    t.add_argument("--blocks-per-stage", type=int, default=d.blocks_per_stage,
                   help="residual blocks per stage (default %(default)s)")
    t.add_argument("--stem-stride", type=int, choices=(1, 2), default=d.stem_stride,
                   help="1 keeps the first stage at full resolution: 4x the work (default %(default)s)")
    t.add_argument("--learning-rate", type=float, default=d.learning_rate,
                   help="peak AdamW learning rate (default %(default)s)")
    t.add_argument("--seed", type=int, default=d.seed, help="fixes split, init and augmentation (default %(default)s)")
    t.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs,
                   help="linear learning-rate warm-up before cosine decay (default %(default)s)")
    t.add_argument("--init-from", default=d.init_from,
                   help="start from this trained .keras (same architecture) instead of random weights")
    t.add_argument("--teacher", dest="teachers", action="append", default=[], metavar="MODEL.keras",
                   help="distil: learn each training image's class distribution from this trained model, averaged "
                   "over the eight flips/rotations (repeat for an ensemble; no label smoothing then)")
    t.add_argument("--targets-from", default=None, metavar="RUN_DIR",
                   help="reuse the teachers' targets a finished distillation run computed (same data, split and "
                   "--teacher list, checked) instead of running the teachers again")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last epoch checkpoint, with the run's own settings")

    e = sub.add_parser("evaluate", help="metrics, calibration, confusion matrix and curves on the test split, of a "
                       "training run or (with --version) of an exported version as served")
    run_dir(e)
    e.add_argument("--data", default=None, help="for a run: where its training data is now (its test "
                   "split is used); with --version: any folder-per-class dataset, evaluated whole (default: the "
                   "version's test split)")
    e.add_argument("--version", type=int, default=None,
                   help="evaluate models/<name>/<version> (the SavedModel as served) instead of --run-dir")
    e.add_argument("--out", default=None, help="where a --version evaluation goes (default runs/<name>-v<version>/"
                   "evaluation; never inside the immutable version)")

    x = sub.add_parser("export", help="write models/<name>/<version>/ as a SavedModel with three signatures "
                       "(serving_default, gradcam, gradcam_multilayer)")
    x.add_argument("--model", default=None, help="a trained .keras file (default: <run-dir>/model.keras)")
    run_dir(x)
    x.add_argument("--models-dir", default="models", help="TF Serving model repository (default %(default)s)")
    x.add_argument("--name", default="eurosat", help="model name (default %(default)s)")
    x.add_argument("--version", type=int, default=None, help="version number (default: next free)")
    x.add_argument("--class-names", default=None, help="file with one class name per line (default: the run's)")
    x.add_argument("--gsd-m", type=float, default=None,
                   help="ground sample distance the model was trained at, metres per pixel (EuroSAT: 10): makes it a "
                   "tile model, so larger scenes are resampled to this scale and tiled; omit for a photo-scene model "
                   "(the whole image is resized)")
    x.add_argument("--tta", action="store_true",
                   help="serve the mean over the eight flips/rotations of each square input (test-time augmentation: "
                   "8x the forward work per image; the temperature is fitted again on the run's validation split)")

    for flag in ("--models-dir", "--name"):
        e._add_action(next(act for act in x._actions if flag in act.option_strings))

    k = sub.add_parser("calibrate", help="a new version of an exported one whose probabilities are temperature-"
                       "scaled (T fitted on its validation split); same signatures, logits and Grad-CAM gradients")
    for flag in ("--models-dir", "--name"):
        k._add_action(next(act for act in x._actions if flag in act.option_strings))
    k.add_argument("--version", type=int, required=True, help="the exported version to calibrate")
    k.add_argument("--to-version", type=int, default=None, help="version number to write (default: next free)")

    c = sub.add_parser("card", help="write the STAC model card (assets/model_card.json) of an exported version")
    for flag in ("--models-dir", "--name"):
        c._add_action(next(act for act in x._actions if flag in act.option_strings))
    c.add_argument("--version", type=int, required=True, help="the exported version")
    c._add_action(next(act for act in x._actions if "--gsd-m" in act.option_strings))

    s = sub.add_parser("soup", help="average the weights of finished runs of one network, keeping each only if "
                       "validation accuracy does not drop (greedy soup); writes a run that evaluate and export take")
    s.add_argument("--ingredient", dest="ingredients", action="append", required=True, metavar="RUN_DIR",
                   help="a finished run (model.keras, run.json) on the same data and split; repeat, two or more")
    s.add_argument("--run-dir", required=True, help="a new folder for the soup's model.keras and run.json")

    a = sub.add_parser("all", help="train, evaluate, then export")
    for action in t._actions[1:]:
        a._add_action(action)
    for flag in ("--models-dir", "--name", "--version", "--gsd-m"):
        a._add_action(next(act for act in x._actions if flag in act.option_strings))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from exporter.errors import ExporterError

    try:
        if args.command in ("train", "all"):
            from dataclasses import replace

            from exporter.config import resume_config

            fields = TrainConfig.__dataclass_fields__
            cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
            cfg = replace(cfg, teachers=tuple(cfg.teachers))
            if args.targets_from and args.resume:
                raise ExporterError("--targets-from starts a fresh run; --resume reads the run's own targets: drop one")
            cfg = resume_config(args.run_dir, cfg, DEFAULTS) if args.resume else cfg  # refuse before loading TF

            from exporter.train import train

            train(cfg, resume=args.resume, targets_from=args.targets_from)
        if args.command == "soup":
            from exporter.soup import soup

            soup(args.ingredients, args.run_dir)
        if args.command == "evaluate" and args.version is not None:
            from exporter.evaluate import evaluate_version

            evaluate_version(args.models_dir, args.name, args.version, args.data, args.out)
        elif args.command in ("evaluate", "all"):
            from exporter.evaluate import evaluate

            evaluate(args.run_dir, getattr(args, "data", None))
        if args.command == "calibrate":
            from exporter.calibrate import calibrate_version

            print(calibrate_version(args.models_dir, args.name, args.version, args.to_version))
        if args.command in ("export", "all"):
            from exporter.export import export_from_run

            path = export_from_run(
                run_dir=args.run_dir,
                model_path=getattr(args, "model", None),
                models_dir=args.models_dir,
                name=args.name,
                version=args.version,
                class_names_file=getattr(args, "class_names", None),
                gsd_m=args.gsd_m,
                tta=getattr(args, "tta", False),
            )
            print(path)
        if args.command == "card":
            from pathlib import Path

            from exporter.card import card_for_version, write_card

            version_dir = Path(args.models_dir) / args.name / str(args.version)
            print(write_card(version_dir, card_for_version(version_dir, args.gsd_m)))
    except ExporterError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # always exactly one line
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
