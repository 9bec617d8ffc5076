"""Command line: ``pyro-groupvae train MODEL ...``, ``pyro-groupvae evaluate RUN_DIR``, ``pyro-groupvae demo``."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .runs import all_recipes


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
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (default: refuse)")
    t = p.add_argument_group("devices and training engine (PyTorch Lightning; see README, multi-device training)")
    t.add_argument("--accelerator", default=None, help="cpu, gpu, auto (default: from --device)")
    t.add_argument("--devices", default=None, type=_devices,
                   help="number of devices (processes), a comma list of GPU ids, or auto (default 1)")
    t.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, ... (ddp for several devices)")
    t.add_argument("--num-nodes", type=int, default=1, help="machines of a multi-node run (torchrun / SLURM)")
    t.add_argument("--precision", default=None, choices=["32-true", "bf16-mixed"], help="numeric precision")
    t.add_argument("--logger", default="csv", choices=["csv", "tensorboard", "none"],
                   help="metrics logger writing into --out (tensorboard needs the tensorboard package)")
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    t.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation ELBO")
    t.add_argument("--jit", action="store_true",
                   help="train with the JIT version of the model's ELBO (compiled once per batch shape)")


#: options of ``_common_train_args`` that go to the training engine (Lightning), not to the recipe
ENGINE_OPTIONS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "logger", "num_workers",
                  "early_stopping", "jit")


def _devices(text):
    if text == "auto":
        return text
    try:
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices must be a number, a comma list of ids or auto, got {text!r}")


def _given_options(argv):
    """Destinations of the ``train`` options written on the command line ``argv`` (not left at their default)."""
    unset = object()
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["train"]
    for model_parser in next(a for a in train._subparsers._group_actions if a.dest == "model").choices.values():
        for action in model_parser._actions:
            if action.dest != "help":
                action.default = unset
    return {k for k, v in vars(parser.parse_args(argv)).items() if v is not unset}


def _field_type(f):
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for name, typ in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if name in t:
            return typ
    return str


def add_config_arguments(parser, config_cls, defaults=None, exclude=()):
    """Add one option per command-line field of a model's config dataclass (``--content-dim`` for
    ``content_dim``; help, choices and default from the field, see :func:`~pyro_groupvae.models.base.param`).

    :param defaults: ``{field: default}`` replacing the dataclass's default on the command line (a recipe's
        choice, e.g. ``architecture=None``: decided from the image size).
    :param exclude: fields the recipe sets itself.
    """
    from .models.base import option_key

    defaults = defaults or {}
    group = parser.add_argument_group(f"model options (pyro_groupvae.models.{config_cls.__name__})")
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if not f.init or not meta.get("cli", True) or f.name in exclude:
            continue
        flag = "--" + (meta.get("flag") or f.name).replace("_", "-")
        help = meta.get("help") or f.name.replace("_", " ")
        if meta.get("negate"):
            group.add_argument(flag, dest=option_key(f), action="store_true", help=help)
            continue
        default = defaults.get(f.name, f.default)
        if default is None and f.default is not None:
            help += " (unset: chosen by the recipe from the data or preset)"
        typ = _field_type(f)
        if typ is bool:
            group.add_argument(flag, dest=option_key(f), action=argparse.BooleanOptionalAction, default=default,
                               help=help)
        else:
            group.add_argument(flag, dest=option_key(f), type=typ, default=default, choices=meta.get("choices"),
                               help=help)


def build_parser():
    recipes = all_recipes()
    parser = argparse.ArgumentParser(prog="pyro-groupvae", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (accepted anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model into a run folder")
    models = train.add_subparsers(dest="model", required=True)
    for name, recipe in sorted(recipes.items()):
        p = models.add_parser(name, help=recipe.description, description=recipe.description,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        _common_train_args(p)
        if recipe.config_class is not None:
            add_config_arguments(p, recipe.config_class, recipe.config_defaults, recipe.config_exclude)
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
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo's runs in --out")
    return parser


def main(argv=None):
    """Run the command line; returns the exit code: 0 done, 2 error (one line ``pyro-groupvae: error: ...`` on
    stderr; ``--debug`` anywhere on the line, or ``PYRO_GROUPVAE_DEBUG=1``, also prints the traceback), 130
    interrupted (Ctrl-C, a ``KeyboardInterrupt``, which :func:`~pyro_groupvae.infer.fit` also raises for Lightning's
    interrupted training; one line says where the last checkpoint is and how to resume)."""
    from .clierrors import check_args, pop_debug, report_error, report_interrupt

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = pop_debug(argv)
    args = None
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        if args.command == "train":
            from .runs import train_run

            opts = {k: v for k, v in vars(args).items()
                    if k not in ("command", "model", "dataset", "epochs", "out", "device", "seed", "lr", "resume",
                                 "no_progress", "overwrite") + ENGINE_OPTIONS}
            engine = {k: getattr(args, k) for k in ENGINE_OPTIONS}
            given = _given_options(argv) if args.resume else None
            train_run(args.model, args.out, dataset=args.dataset, epochs=args.epochs, device=args.device,
                      seed=args.seed, lr=args.lr if given is None or "lr" in given else None, resume=args.resume,
                      progress=not args.no_progress, overwrite=args.overwrite, engine=engine, given=given, **opts)
            from .infer.train import process_rank

            if process_rank() == 0:
                print(f"trained {args.model}: {Path(args.out) / 'checkpoint.pt'}")
        elif args.command == "evaluate":
            from .runs import evaluate_run

            evaluate_run(args.run_dir, device=args.device, baseline=args.baseline, quick=args.quick,
                         seed=args.seed)
            print(f"report: {Path(args.run_dir) / 'report.md'}")
        elif args.command == "demo":
            from .experiments.mlvae import demo

            report = demo(args.out, device=args.device, epochs=args.epochs, quick=args.quick,
                          overwrite=args.overwrite)
            print(f"demo report: {report}")
    except KeyboardInterrupt:
        return report_interrupt(args, debug)
    except Exception as e:  # every failure is one line naming the problem and what to do (trace with --debug)
        return report_error(e, debug, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
