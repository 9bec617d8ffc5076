"""CelebA (Liu et al., 2015) in its official layout, read lazily, grouped by identity or by attributes.

Expected files (``root`` may hold them directly, in the Google-Drive folders ``Img/``, ``Anno/``, ``Eval/``, or in
``celeba/`` as torchvision downloads them)::

    img_align_celeba/000001.jpg ... 202599.jpg   aligned and cropped faces, 178x218 JPEG
    list_attr_celeba.txt       line 1: number of images; line 2: the 40 attribute names;
                               then "000001.jpg -1  1  1 -1 ..." (one -1/1 per attribute)
    identity_CelebA.txt        "000001.jpg 2880" (identity of each image)
    list_eval_partition.txt    "000001.jpg 0" (0 train, 1 validation, 2 test)

Only the files a request needs are read: identity grouping needs ``identity_CelebA.txt``, attribute grouping or
structured batches ``list_attr_celeba.txt``; the partition is always needed. The published MD5s of the three text
files (torchvision's ``CelebA.file_list``) are checked; a mismatch warns and names the file.

Grouping (``group_by``):

* ``"identity"``: one group per person (ML-VAE; Bouchacourt et al. 2018 group MS-Celeb-1M and CelebA faces by
  identity). Labels are renumbered ``0..G-1`` inside the split; ``extras["identity"]`` keeps CelebA's ids.
* an attribute expression, e.g. ``"Male"``, ``"Black_Hair & ~Smiling"``, ``"Blond_Hair | Gray_Hair"``
  (names, ``~``/``not``, ``&``/``and``, ``|``/``or``, parentheses): two groups, 0 (false) and 1 (true).
* several comma-separated expressions, e.g. ``"Male,Smiling"``: one group per combination, label
  ``sum_i 2**i * [expression i]``.
* ``None`` / ``"none"``: label 0 for every image (UG-VAE trains on random batches).

Structured batches (UG-VAE, Ruiz et al., table 1 and fig. 7): ``structured_by="Black_Hair,Blond_Hair"`` (or
``"Male,~Male"``) makes the label the *family* of each image: ``k`` when it satisfies expression ``k`` and no
other, ``K`` ("other") otherwise; ``extras["families"]`` (``{name: [k]}``) plugs into
:func:`pyro_groupvae.data.samplers.structured_batches`, and :func:`celeba_structured_batches` builds the paper's
batches (e.g. 128 black-haired vs 128 blond people per batch, optionally with random batches as a third class).
Training batches stay random, as in the paper.

Images: ``crop`` (default 148, the centred 148x148 face crop common in CelebA-64 VAE code; the UG-VAE paper does
not say which crop it used) then bilinear resize to ``size`` (default 64).
"""
from __future__ import annotations

import ast
import os
import warnings
from typing import Optional

import numpy as np
import torch

from .folder import ImageFileReader, check_size_channels
from .lazy import LazyImageDataset, verify_md5

__all__ = ["load_celeba", "celeba_structured_batches", "attribute_mask", "CELEBA_ATTRIBUTES", "read_celeba_split",
           "read_celeba_identities", "read_celeba_attributes"]

#: the 40 attributes, in file order
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
SPLITS = {"train": 0, "val": 1, "test": 2}
_SUBDIRS = ("", "Anno", "Eval", "Img", "celeba", os.path.join("celeba", "Anno"), os.path.join("celeba", "Eval"),
            os.path.join("celeba", "Img"))


def _find(root: str, name: str, folder: bool = False) -> str:
    for sub in _SUBDIRS:
        p = os.path.join(root, sub, name)
        if (os.path.isdir(p) if folder else os.path.isfile(p)):
            if folder and os.path.isdir(os.path.join(p, name)):  # Kaggle: img_align_celeba/img_align_celeba/
                p = os.path.join(p, name)
            return p
    raise FileNotFoundError(
        f"CelebA {'folder' if folder else 'file'} {name!r} not found under {root!r} (looked in "
        f"{', '.join(repr(s or '.') for s in _SUBDIRS)}); expected the official layout: img_align_celeba/, "
        "list_attr_celeba.txt, identity_CelebA.txt, list_eval_partition.txt (see docs/datasets/celeba.md)")


def _two_columns(path: str, what: str):
    with open(path) as f:
        tokens = f.read().split()
    if len(tokens) % 2:
        raise ValueError(f"{path!r}: expected lines '<image>.jpg <{what}>', found an odd number of fields "
                         "(truncated or wrong file?)")
    tok = np.array(tokens, dtype=object).reshape(-1, 2)
    try:
        vals = tok[:, 1].astype(np.int64)
    except ValueError:
        raise ValueError(f"{path!r}: the second column must be an integer {what}; is this the right file?") from None
    if len(tok) == 0:
        raise ValueError(f"{path!r} is empty")
    if not str(tok[0, 0]).lower().endswith((".jpg", ".png")):
        raise ValueError(f"{path!r}: first field {tok[0, 0]!r} is not an image file name (wrong header?)")
    return tok[:, 0].astype(str), vals


def read_celeba_split(path: str):
    """``(file names, partition)`` from ``list_eval_partition.txt`` (0 train, 1 val, 2 test)."""
    names, part = _two_columns(path, "partition (0, 1 or 2)")
    bad = ~np.isin(part, (0, 1, 2))
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise ValueError(f"{path!r}: partition {part[i]} for {names[i]}, expected 0 (train), 1 (val) or 2 (test)")
    return names, part


def read_celeba_identities(path: str):
    """``(file names, identity ids)`` from ``identity_CelebA.txt``."""
    return _two_columns(path, "identity")


def read_celeba_attributes(path: str):
    """``(file names, attribute names, values int8 (N, 40) in {-1, 1})`` from ``list_attr_celeba.txt``."""
    with open(path) as f:
        first = f.readline()
        second = f.readline()
        body = f.read()
    try:
        count = int(first.strip())
    except ValueError:
        raise ValueError(f"{path!r}: line 1 must be the number of images, found {first.strip()[:60]!r} (wrong header; "
                         "is this list_attr_celeba.txt?)") from None
    names = second.split()
    if not names or any(n.lstrip("-").isdigit() for n in names):
        raise ValueError(f"{path!r}: line 2 must list the attribute names, found {second.strip()[:60]!r}")
    k = len(names)
    rows = [line.split(None, 1) for line in body.splitlines() if line.strip()]
    if rows and len(rows[-1]) < 2:
        rows[-1].append("")
    if len(rows) != count:
        raise ValueError(f"{path!r}: line 1 says {count} images but the file lists {len(rows)} (truncated?)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy warns when the text does not parse to its end
        vals = np.fromstring(" ".join(r[1] if len(r) > 1 else "" for r in rows), dtype=np.int8, sep=" ")
    if vals.size != count * k:
        raise ValueError(f"{path!r}: every row must hold a file name and {k} values -1/1; found {vals.size} values "
                         f"for {count} rows (the file ends mid-row or holds other text: truncated or wrong file?)")
    vals = vals.reshape(count, k)
    if not np.isin(vals, (-1, 1)).all():
        raise ValueError(f"{path!r}: attribute values must be -1 or 1, found {sorted(set(np.unique(vals)) - {-1, 1})}")
    return np.array([r[0] for r in rows]), names, vals


# ------------------------------------------------------------------------------------------ attribute expressions
def attribute_mask(expression: str, attributes: np.ndarray, names) -> np.ndarray:
    """Boolean mask of the rows satisfying an attribute expression (``~ & |``, ``not and or``, parentheses).

    :param str expression: e.g. ``"Black_Hair & ~Smiling"``.
    :param np.ndarray attributes: ``(N, A)`` values in ``{-1, 1}`` (or booleans).
    :param names: the ``A`` attribute names.
    :raises ValueError: an unknown attribute (the message lists the known ones) or a malformed expression.
    """
    names = list(names)
    attrs = np.asarray(attributes) > 0
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"malformed attribute expression {expression!r}; use names with ~ & | and parentheses, "
                         "e.g. 'Black_Hair & ~Smiling'") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"unknown CelebA attribute {node.id!r} in {expression!r}; known: {', '.join(names)}")
            return attrs[:, names.index(node.id)]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Invert, ast.Not)):
            return ~ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            a, b = ev(node.left), ev(node.right)
            return (a & b) if isinstance(node.op, ast.BitAnd) else (a | b)
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            out = vals[0]
            for v in vals[1:]:
                out = (out & v) if isinstance(node.op, ast.And) else (out | v)
            return out
        raise ValueError(f"malformed attribute expression {expression!r}: only attribute names, ~ (not), & (and), "
                         "| (or) and parentheses are allowed")

    return np.asarray(ev(tree), dtype=bool)


def _split_list(spec) -> list:
    if isinstance(spec, (list, tuple)):
        return [str(s).strip() for s in spec if str(s).strip()]
    return [s.strip() for s in str(spec).split(",") if s.strip()]


# ------------------------------------------------------------------------------------------ loader
def load_celeba(root, split: str = "train", group_by: Optional[str] = "identity", structured_by=None,
                size: int = 64, crop: Optional[int] = 148, channels: int = 3, min_group_size: int = 1,
                cache: bool = False, verify: Optional[bool] = None, checksums: Optional[dict] = None):
    """CelebA, lazily read, with the official partition and a grouping (see the module docstring).

    :param root: the CelebA folder.
    :param str split: ``"train"``, ``"val"``, ``"test"`` (official ``list_eval_partition.txt``) or ``"all"``.
    :param str group_by: ``"identity"``, attribute expression(s) or ``None``; ignored when ``structured_by`` is
        given (the label is then the family).
    :param structured_by: comma-separated attribute expressions (or a list), one batch family each.
    :param int size: output size; :param int crop: centred crop before resizing (``None``: the largest square).
    :param int min_group_size: with ``group_by="identity"``, drop identities with fewer images in the split.
    :param bool cache: keep images in memory once read.
    :return: :class:`~pyro_groupvae.data.lazy.LazyImageDataset` with ``y`` the group (or family);
        ``extras``: ``paths``, ``attributes`` (int8 ``(n, 40)`` in {-1, 1}, when read), ``attribute_names``,
        ``identity`` (when read), ``group_names`` and, with ``structured_by``, ``families`` / ``family_names``.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"CelebA folder {root!r} does not exist")
    size = check_size_channels(size, channels)
    if split not in (*SPLITS, "all"):
        raise ValueError(f"CelebA split must be 'train', 'val', 'test' or 'all', got {split!r}")
    try:
        img_dir = _find(root, "img_align_celeba", folder=True)
    except FileNotFoundError:
        try:  # the lossless release: img_align_celeba_png.7z unpacks to img_align_celeba_png/000001.png
            img_dir = _find(root, "img_align_celeba_png", folder=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"CelebA image folder 'img_align_celeba' (or 'img_align_celeba_png') not found "
                                    f"under {root!r}; expected the official layout (see docs/datasets/celeba.md)"
                                    ) from None
    part_path = _find(root, "list_eval_partition.txt")
    verify_md5(part_path, verify=verify, checksums=checksums)
    names, part = read_celeba_split(part_path)
    keep = np.ones(len(names), dtype=bool) if split == "all" else part == SPLITS[split]
    group_by = None if (group_by is None or str(group_by).lower() in ("none", "")) else str(group_by)
    need_attr = structured_by is not None or (group_by is not None and group_by != "identity")
    extras = {}

    def aligned(path, file_names, what):
        if len(file_names) != len(names) or not np.array_equal(file_names, names):
            raise ValueError(f"{path!r} lists {len(file_names)} images, {part_path!r} lists {len(names)} "
                             f"(or in another order): the {what} and partition files do not match")

    if need_attr:
        attr_path = _find(root, "list_attr_celeba.txt")
        verify_md5(attr_path, verify=verify, checksums=checksums)
        anames, attr_names, attrs = read_celeba_attributes(attr_path)
        aligned(attr_path, anames, "attribute")
    identity = None
    if group_by == "identity":
        id_path = _find(root, "identity_CelebA.txt")
        verify_md5(id_path, verify=verify, checksums=checksums)
        inames, identity = read_celeba_identities(id_path)
        aligned(id_path, inames, "identity")

    rows = np.nonzero(keep)[0]
    if structured_by is not None:
        exprs = _split_list(structured_by)
        if not exprs:
            raise ValueError("structured_by needs at least one attribute expression, e.g. 'Black_Hair,Blond_Hair'")
        masks = np.stack([attribute_mask(e, attrs, attr_names) for e in exprs], 1)
        only = masks.sum(1) == 1
        label = np.where(only, masks.argmax(1), len(exprs))
        extras["families"] = {e: [k] for k, e in enumerate(exprs)}
        extras["family_names"] = exprs + ["other"]
        extras["group_names"] = exprs + ["other"]
    elif group_by == "identity":
        label = identity
    elif group_by is not None:
        exprs = _split_list(group_by)
        masks = np.stack([attribute_mask(e, attrs, attr_names) for e in exprs], 1)
        label = (masks * (1 << np.arange(len(exprs)))).sum(1)
        extras["group_names"] = [" & ".join(e if (g >> i) & 1 else f"~({e})" for i, e in enumerate(exprs))
                                 for g in range(2 ** len(exprs))]
    else:
        label = np.zeros(len(names), dtype=np.int64)
    label = np.asarray(label, dtype=np.int64)[rows]
    if group_by == "identity" and structured_by is None:
        ids, label = np.unique(label, return_inverse=True)
        label = label.reshape(-1)
        if min_group_size > 1:
            counts = np.bincount(label)
            ok = counts[label] >= min_group_size
            rows, label = rows[ok], label[ok]
            ids, label = np.unique(ids[label], return_inverse=True)
            label = label.reshape(-1)
        extras["group_names"] = [str(i) for i in ids]
    if len(rows) == 0:
        raise ValueError(f"CelebA split {split!r} has no images (min_group_size={min_group_size})")
    listed = names[rows]
    if not os.path.isfile(os.path.join(img_dir, listed[0])):
        png = os.path.splitext(listed[0])[0] + ".png"
        if os.path.isfile(os.path.join(img_dir, png)):  # PNG release, file lists still name .jpg
            listed = np.array([os.path.splitext(n)[0] + ".png" for n in listed])
    extras["paths"] = np.array([os.path.join(img_dir, n) for n in listed])
    if need_attr:
        extras["attributes"] = torch.from_numpy(attrs[rows])
        extras["attribute_names"] = list(attr_names)
    if identity is not None:
        extras["identity"] = torch.from_numpy(identity[rows])
    first = extras["paths"][0]
    if not os.path.isfile(first):
        raise FileNotFoundError(f"CelebA image {first!r} listed in {part_path!r} is missing from {img_dir!r}")
    reader = ImageFileReader(extras["paths"], size, channels, crop=crop)
    return LazyImageDataset(reader, torch.from_numpy(label), name=f"celeba-{split}", extras=extras, cache=cache)


def celeba_structured_batches(data, batch_size: int = 128, batches_per_family: int = 50, seed: int = 0,
                              random_batches: bool = False):
    """UG-VAE's structured batches (table 1): ``batch_size`` images of one family per batch.

    :param data: a dataset from :func:`load_celeba` with ``structured_by``.
    :param bool random_batches: add a class of random batches (the paper's "vs random (2)" rows).
    :return: ``(GroupBatch, family ids (num_batches,), class names)``.
    """
    from .samplers import GroupBatch, structured_batches

    fams = data.extras.get("families")
    if not fams:
        raise ValueError("the dataset has no attribute families: load it with structured_by=..., e.g. "
                         "load_celeba(root, structured_by='Black_Hair,Blond_Hair')")
    batch, fam = structured_batches(data.y, fams, batch_size, batches_per_family, seed=seed)
    names = list(fams)
    if random_batches:
        gen = torch.Generator().manual_seed(seed + 1)
        idx = torch.cat([torch.randperm(len(data), generator=gen)[:batch_size] for _ in range(batches_per_family)])
        g0 = batch.num_groups
        batch = GroupBatch(torch.cat([batch.indices, idx]),
                           torch.cat([batch.group_index, g0 + torch.arange(batches_per_family).repeat_interleave(
                               batch_size)]), g0 + batches_per_family)
        fam = torch.cat([fam, torch.full((batches_per_family,), len(names))])
        names.append("random")
    return batch, fam, names
