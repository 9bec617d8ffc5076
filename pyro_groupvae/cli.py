"""Command line: ``pyro-groupvae train MODEL ...``, ``pyro-groupvae evaluate RUN_DIR``, ``pyro-groupvae demo``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runs import _import_recipes, RECIPES


def _common_train_args(p):
    p.add_argument("--dataset", default=None, help="dataset name (see pyro_groupvae.data.DATASETS)")
    p.add_argument("--data-root", default=None, help="folder with the dataset files (IDX, image folder, npz)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", required=True, help="run folder (config.json, checkpoint.pt, history.csv)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser():
    _import_recipes()
    parser = argparse.ArgumentParser(prog="pyro-groupvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model into a run folder")
    models = train.add_subparsers(dest="model", required=True)
    for name, recipe in sorted(RECIPES.items()):
        p = models.add_parser(name, help=recipe.description)
        _common_train_args(p)
        recipe.add_arguments(p)
    ev = sub.add_parser("evaluate", help="evaluate a run: metrics.json, figures/*.png, report.md")
    ev.add_argument("run_dir")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--baseline", default=None, help="a baseline run folder to compare with (ML-VAE: a VAE run; N-VAE: a CVAE run)")
    ev.add_argument("--quick", action="store_true", help="small evaluation settings (smoke tests)")
    ev.add_argument("--seed", type=int, default=0)
    demo = sub.add_parser("demo", help="train and evaluate ML-VAE and the VAE baseline on the bundled MNIST")
    demo.add_argument("--out", default="demo_run")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's number of epochs")
    demo.add_argument("--quick", action="store_true", help="a tiny run, for smoke tests")
    return parser


def main(argv=None):
    from .infer.train import CheckpointError
    from .validation import InputError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from .runs import train_run

            opts = {k: v for k, v in vars(args).items()
                    if k not in ("command", "model", "dataset", "epochs", "out", "device", "seed", "lr", "resume",
                                 "no_progress")}
            train_run(args.model, args.out, dataset=args.dataset, epochs=args.epochs, device=args.device,
                      seed=args.seed, lr=args.lr, resume=args.resume, progress=not args.no_progress, **opts)
            print(f"trained {args.model}: {Path(args.out) / 'checkpoint.pt'}")
        elif args.command == "evaluate":
            from .runs import evaluate_run

            evaluate_run(args.run_dir, device=args.device, baseline=args.baseline, quick=args.quick,
                         seed=args.seed)
            print(f"report: {Path(args.run_dir) / 'report.md'}")
        elif args.command == "demo":
            from .experiments.mlvae import demo

            report = demo(args.out, device=args.device, epochs=args.epochs, quick=args.quick)
            print(f"demo report: {report}")
    except (InputError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"pyro-groupvae: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
