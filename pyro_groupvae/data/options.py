"""Command-line options of the file-based datasets, shared by the training recipes.

A recipe calls :func:`add_dataset_arguments` in its ``add_arguments``; :func:`pyro_groupvae.runs.load_data` turns
the parsed options into loader keywords with :func:`dataset_kwargs` (only the keywords the chosen dataset
understands; ``--dataset-options`` JSON, where a recipe has it, takes precedence). Example::

    pyro-groupvae train mlvae --dataset celeba --data-root ~/data/celeba --group-by identity --out runs/celeba
    pyro-groupvae train ugvae --dataset celeba --data-root ~/data/celeba --structured-by Black_Hair,Blond_Hair ...
"""
from __future__ import annotations

__all__ = ["add_dataset_arguments", "dataset_kwargs"]

_SIZED = {"folder", "celeba", "faces", "smallnorb", "cars3d"}
_LAZY = {"folder", "celeba", "faces", "3dshapes", "mpi3d", "smallnorb", "cars3d"}
_GROUND_TRUTH = {"3dshapes", "mpi3d", "smallnorb", "cars3d"}


def add_dataset_arguments(p):
    """Add ``--group-by``, ``--structured-by``, ``--image-size``, ``--cache-images``, ``--num-images``,
    ``--label-factor``, ``--no-verify-checksums`` and (if absent) ``--dataset-options`` to an argparse parser (all
    default to the loader's own)."""
    if any("--group-by" in a.option_strings for a in p._actions):  # added already (shared helpers)
        return
    g = p.add_argument_group("dataset files (celeba, faces, folder, 3dshapes, mpi3d, smallnorb, cars3d)")
    g.add_argument("--group-by", default=None,
                   help="celeba: 'identity' (default), 'none', or attribute expression(s), e.g. 'Male' or "
                        "'Male,Smiling' (one group per combination)")
    g.add_argument("--structured-by", default=None,
                   help="celeba: comma-separated attribute sets defining UG-VAE's structured batch families, e.g. "
                        "'Black_Hair,Blond_Hair' (paper table 1); the label becomes the family")
    g.add_argument("--image-size", type=int, default=None,
                   help="output image size for folder/celeba/faces/smallnorb/cars3d (default 64)")
    g.add_argument("--cache-images", action="store_true",
                   help="keep images in memory once read (lazy datasets)")
    g.add_argument("--num-images", type=int, default=None,
                   help="dSprites and the ground-truth benchmarks: a random subset of this many images of the "
                        "split")
    g.add_argument("--label-factor", default=None, help="ground-truth benchmarks: the factor used as label / group")
    g.add_argument("--no-verify-checksums", action="store_true",
                   help="skip the MD5 check of the official files")
    if not any("--dataset-options" in a.option_strings for a in p._actions):
        import json

        g.add_argument("--dataset-options", type=json.loads, default=None,
                       help='JSON dict of loader keywords, e.g. \'{"min_images": 5}\' (overrides the options above)')


def dataset_kwargs(dataset, opts: dict) -> dict:
    """Loader keywords for ``dataset`` from parsed options (a run's ``config["options"]``)."""
    kw = {}
    if dataset == "celeba":
        if opts.get("group_by") is not None:
            kw["group_by"] = opts["group_by"]
        if opts.get("structured_by") is not None:
            kw["structured_by"] = opts["structured_by"]
    elif opts.get("group_by") is not None or opts.get("structured_by") is not None:
        from ..validation import InputError

        raise InputError(f"--group-by / --structured-by apply to --dataset celeba, not {dataset!r}")
    if dataset in _SIZED and opts.get("image_size") is not None:
        kw["size"] = int(opts["image_size"])
    if dataset in _LAZY and opts.get("cache_images"):
        kw["cache"] = True
    if dataset in _GROUND_TRUTH | {"dsprites"} and opts.get("num_images") is not None:
        kw["n"] = int(opts["num_images"])
    if dataset in _GROUND_TRUTH and opts.get("label_factor") is not None:
        kw["label_factor"] = opts["label_factor"]
    if dataset in _GROUND_TRUTH | {"celeba"} and opts.get("no_verify_checksums"):
        kw["verify"] = False
    return kw
