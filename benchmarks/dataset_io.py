"""Read throughput of the lazy loaders (images per second, one process), on synthetic files in the official formats.

    OMP_NUM_THREADS=1 python benchmarks/dataset_io.py [--n 2000]

* CelebA layout: 178x218 JPEGs (smooth faces-like content + noise, quality 90), centre crop 148, resize to 64;
* 3dshapes.h5: random rows of a (N, 64, 64, 3) uint8 HDF5 dataset, batches of 64;
* npz (MPI3D layout): random rows of an uncompressed (N, 64, 64, 3) npz, memory-mapped, batches of 64;
* the same CelebA reads with ``cache=True`` on the second pass.

The first number bounds a training epoch from below on any accelerator: an epoch of CelebA's 162,770 training
images needs ``162770 / (images/s x workers)`` seconds of decoding.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _rate(fn, n):
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args(argv)
    from PIL import Image

    from pyro_groupvae.data.folder import ImageFileReader
    from pyro_groupvae.data.groundtruth import load_mpi3d
    from pyro_groupvae.data.lazy import LazyImageDataset

    import h5py
    import torch

    rng = np.random.default_rng(0)
    n = args.n
    with tempfile.TemporaryDirectory() as d:
        yy, xx = np.mgrid[0:218, 0:178]
        paths = []
        for i in range(n):
            base = (128 + 100 * np.sin(xx / (20 + i % 7)) * np.cos(yy / 25))[..., None] * np.array([1.0, 0.8, 0.7])
            img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
            p = os.path.join(d, f"{i + 1:06d}.jpg")
            Image.fromarray(img).save(p, quality=90)
            paths.append(p)
        ds = LazyImageDataset(ImageFileReader(paths, 64, 3, crop=148), torch.zeros(n, dtype=torch.long), cache=True)
        order = rng.permutation(n)
        jpeg = _rate(lambda: [ds.x[order[k:k + 64]] for k in range(0, n, 64)], n)
        cached = _rate(lambda: [ds.x[order[k:k + 64]] for k in range(0, n, 64)], n)

        imgs = rng.integers(0, 255, size=(n, 64, 64, 3), dtype=np.uint8)
        with h5py.File(os.path.join(d, "x.h5"), "w") as f:
            f["images"] = imgs
        from pyro_groupvae.data.lazy import ArrayReader

        class _Open:
            def __call__(self):
                return h5py.File(os.path.join(d, "x.h5"), "r")["images"]

        h5 = LazyImageDataset(ArrayReader(_Open(), imgs.shape), torch.zeros(n, dtype=torch.long))
        h5_rate = _rate(lambda: [h5.x[order[k:k + 64]] for k in range(0, n, 64)], n)

        m = n - n % 4
        np.savez(os.path.join(d, "mpi3d_toy.npz"), images=imgs[:m])
        gt = load_mpi3d(os.path.join(d, "mpi3d_toy.npz"), factor_sizes=(1, 1, 1, 1, 1, 4, m // 4), verify=False)
        npz_rate = _rate(lambda: [gt.images(order[k:k + 64] % m) for k in range(0, m, 64)], m)
    print(f"images/s, one process, {n} images, batches of 64 in random order")
    print(f"CelebA JPEG 178x218 -> crop 148 -> 64x64: {jpeg:,.0f}  | same, from the in-memory cache: {cached:,.0f}")
    print(f"HDF5 (3dshapes layout) 64x64x3: {h5_rate:,.0f}  | npz memory map (MPI3D layout): {npz_rate:,.0f}")
    print(f"CelebA train epoch (162,770 images) decode time, 1 worker: {162770 / jpeg:,.0f} s")


if __name__ == "__main__":
    main()
