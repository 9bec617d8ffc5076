"""Tests for the rendered dSprites grid (pyro_groupvae.data.dsprites)."""
import os
import zipfile

import numpy as np
import pytest
import torch

from pyro_groupvae.data.base import ImageDataset
from pyro_groupvae.data.dsprites import DSprites, load_dsprites

from pathlib import Path


def _reference_gif():
    """The real dSprites frames in ../shared/reference beside the checkout (as in CI), or $PYRO_GROUPVAE_SHARED."""
    roots = [Path(__file__).resolve().parents[2] / "shared", Path(os.environ.get("PYRO_GROUPVAE_SHARED", "/nonexistent")),
             Path("/work/shared")]
    for root in roots:
        if (root / "reference" / "dsprites-traversals.gif").exists():
            return str(root / "reference" / "dsprites-traversals.gif")
    return "reference-gif-not-found"


REFERENCE_GIF = _reference_gif()
SQUARE, ELLIPSE, HEART = 0, 1, 2


@pytest.fixture(scope="module")
def ds():
    return DSprites()


def _img(ds, shape, scale, orient, px, py):
    return ds.images_from_factors([[0, shape, scale, orient, px, py]])[0, 0].numpy()


def _extent(img):
    rows, cols = np.nonzero(img)
    return rows.min(), rows.max(), cols.min(), cols.max()


def _centroid(img):
    rows, cols = np.nonzero(img)
    return rows.mean(), cols.mean()


# ----------------------------------------------------------------------------------------- grid
def test_grid_sizes(ds):
    assert len(ds) == 737280
    assert tuple(ds.factor_sizes) == (1, 3, 6, 40, 32, 32)
    assert ds.num_factors == 6
    assert list(ds.factor_names) == ["color", "shape", "scale", "orientation", "posX", "posY"]
    vals = ds.factor_values
    assert [len(v) for v in vals] == [1, 3, 6, 40, 32, 32]
    np.testing.assert_allclose(vals[2], np.linspace(0.5, 1, 6))
    np.testing.assert_allclose(vals[3], np.linspace(0, 2 * np.pi, 40))
    np.testing.assert_allclose(vals[4], np.linspace(0, 1, 32))


def test_index_order_round_trip(ds):
    idx = torch.from_numpy(np.random.default_rng(0).integers(0, len(ds), 5000))
    factors = ds.index_to_factors(idx)
    assert factors.dtype == torch.long and factors.shape == (5000, 6)
    assert torch.equal(ds.factors_to_index(factors), idx)
    # row-major with posY fastest, as in the official npz (latents_classes)
    assert ds.index_to_factors([0, 1, 31, 32, 1024, 40960, 245760]).tolist() == [
        [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 31], [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]]
    assert ds.index_to_factors(737279).tolist() == [[0, 2, 5, 39, 31, 31]]
    with pytest.raises(IndexError):
        ds.index_to_factors([737280])
    with pytest.raises(ValueError):
        ds.factors_to_index([[0, 3, 0, 0, 0, 0]])


def test_images_binary_and_consistent(ds):
    idx = np.random.default_rng(1).integers(0, len(ds), 300)
    x = ds.images(idx)
    assert x.dtype == torch.float32 and x.shape == (300, 1, 64, 64)
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    assert (x.sum(dim=(1, 2, 3)) > 40).all()  # every image shows a sprite
    assert torch.equal(ds.images_from_factors(ds.index_to_factors(idx)), x)
    packed = ds.packed_images(idx)
    assert packed.shape == (300, 512) and packed.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(packed, axis=1).reshape(300, 1, 64, 64), x.numpy())


def test_sprite_cache_matches_direct_rendering():
    rng = np.random.default_rng(2)
    sprites = [(0, 5, 7), (1, 2, 13), (2, 5, 0), (2, 0, 31)]  # (shape, scale, orientation)
    factors = [[0, *sprites[rng.integers(4)], rng.integers(32), rng.integers(32)] for _ in range(400)]
    idx = DSprites().factors_to_index(factors).numpy()
    direct = DSprites(cache_after=-1).images(idx)
    cached = DSprites(cache_after=0)
    assert torch.equal(cached.images(idx), direct)
    assert cached._built.sum() == 4 and cached.cache_nbytes == 4 * 31 * 31 * 32 * 4
    assert torch.equal(cached.images(idx), direct)  # second call served from the tables


def test_sampling_is_seeded(ds):
    f1, x1 = ds.sample(16, 123)
    f2, x2 = ds.sample(16, 123)
    assert torch.equal(f1, f2) and torch.equal(x1, x2)
    assert not torch.equal(ds.sample_factors(16, 124), f1)
    assert (f1 >= 0).all() and (f1 < torch.tensor(ds.factor_sizes)).all()
    obs = ds.sample_observations_from_factors(f1)
    assert obs.dtype == torch.float32 and torch.equal(obs, x1)
    f3 = ds.sample_factors(8, np.random.default_rng(0))
    f4 = ds.sample_factors(8, torch.Generator().manual_seed(0))
    assert f3.shape == f4.shape == (8, 6)


# ------------------------------------------------------------------ calibration (reference numbers)
def test_square_areas_match_reference(ds):
    # reference frames: axis-aligned squares of 10x10 .. 20x20 pixels, 18x18 = 324 at scale 0.9
    areas = [_img(ds, SQUARE, k, 0, 0, 0).sum() for k in range(6)]
    assert areas == [100, 144, 196, 256, 324, 400]
    assert _extent(_img(ds, SQUARE, 5, 0, 0, 0)) == (6, 25, 6, 25)
    assert _extent(_img(ds, SQUARE, 4, 0, 0, 0)) == (7, 24, 7, 24)
    # the 45-degree-ish diamond in the reference covers 368 pixels within rows/cols 3..28
    assert abs(_img(ds, SQUARE, 5, 5, 0, 0).sum() - 368) <= 8


def test_ellipse_and_heart_match_reference(ds):
    ell = [_img(ds, ELLIPSE, k, 0, 0, 0).sum() for k in range(6)]
    heart = [_img(ds, HEART, k, 0, 0, 0).sum() for k in range(6)]
    ref_ell, ref_heart = [76, 104, 144, 184, 228, 288], [58, 84, 108, 140, 182, 222]
    assert all(abs(a - b) <= 4 for a, b in zip(ell, ref_ell)), ell
    assert all(abs(a - b) <= 4 for a, b in zip(heart, ref_heart)), heart
    assert _extent(_img(ds, ELLIPSE, 5, 0, 0, 0)) == (9, 22, 3, 28)
    assert _extent(_img(ds, HEART, 5, 0, 0, 0)) == (7, 23, 6, 25)
    # heart is upright at orientation 0: lobes (more mass) above the centre, point below
    r, c = _centroid(_img(ds, HEART, 5, 0, 0, 0))
    assert r < 15.0 and abs(c - 15.5) < 1e-9


def test_extents_at_extreme_positions(ds):
    # reference: over all frames sprites stay inside pixels 3..57 (hearts at the four corners,
    # everything at position 0)
    for px in (0, 31):
        for py in (0, 31):
            r0, r1, c0, c1 = _extent(_img(ds, HEART, 5, 0, px, py))
            assert 3 <= r0 and r1 <= 57 and 3 <= c0 and c1 <= 57
    assert _extent(_img(ds, HEART, 5, 0, 31, 31)) == (39, 55, 38, 57)
    for shape in (SQUARE, ELLIPSE, HEART):
        imgs = ds.images_from_factors([[0, shape, 5, o, 0, 0] for o in range(40)]).numpy()[:, 0]
        rows, cols = np.nonzero(imgs.any(axis=0))
        assert rows.min() >= 3 and cols.min() >= 3
    # whole grid (sampled): never touches the outer two pixels
    x = ds.images(np.random.default_rng(3).integers(0, len(ds), 3000)).numpy()[:, 0].any(axis=0)
    rows, cols = np.nonzero(x)
    assert rows.min() >= 2 and cols.min() >= 2 and rows.max() <= 61 and cols.max() <= 61


def test_area_grows_with_scale(ds):
    for shape in (SQUARE, ELLIPSE, HEART):
        for orient in (0, 7, 23):
            areas = [_img(ds, shape, k, orient, 10, 20).sum() for k in range(6)]
            assert all(b > a for a, b in zip(areas, areas[1:])), (shape, orient, areas)
            assert 3.0 < areas[-1] / areas[0] < 5.0  # ~ (1 / 0.5) ** 2


def test_rotation_preserves_area(ds):
    for shape in (SQUARE, ELLIPSE, HEART):
        imgs = ds.images_from_factors([[0, shape, 5, o, 0, 0] for o in range(40)])
        areas = imgs.sum(dim=(1, 2, 3)).numpy()
        assert areas.max() / areas.min() < 1.10, (shape, areas.min(), areas.max())
    # orientation 0 and 2*pi are the same angle
    assert np.array_equal(_img(ds, HEART, 5, 0, 4, 9), _img(ds, HEART, 5, 39, 4, 9))


def test_rotation_direction(ds):
    # a positive angle turns counter-clockwise on screen: after ~92 degrees the heart's lobes point left
    # and its point right; after ~46 degrees the point is at the bottom right
    r, c = _centroid(_img(ds, HEART, 5, 10, 0, 0))
    assert c < 15.0 and abs(r - 15.5) < 1.0
    r, c = _centroid(_img(ds, HEART, 5, 5, 0, 0))
    assert c < 15.5 and r < 15.5


def test_positions_move_centroid_monotonically(ds):
    for shape in (SQUARE, ELLIPSE, HEART):
        imgs = ds.images_from_factors([[0, shape, 2, 3, k, 7] for k in range(32)]).numpy()[:, 0]
        cents = np.array([_centroid(im) for im in imgs])
        assert (np.diff(cents[:, 1]) > 0).all() and np.ptp(cents[:, 0]) < 0.5  # posX -> columns
        assert 30.0 < cents[-1, 1] - cents[0, 1] < 34.0
        imgs = ds.images_from_factors([[0, shape, 2, 3, 7, k] for k in range(32)]).numpy()[:, 0]
        cents = np.array([_centroid(im) for im in imgs])
        assert (np.diff(cents[:, 0]) > 0).all() and np.ptp(cents[:, 1]) < 0.5  # posY -> rows
        assert 30.0 < cents[-1, 0] - cents[0, 0] < 34.0


# --------------------------------------------------------------------------- reference frames
def _reference_frame_factors():
    """Factors (shape, scale, orientation, posX, posY) of the 320 GIF frames, read off its traversals:
    for each shape (heart, ellipse, square) scale up/down/up, a full turn at max scale; for the heart
    also a loop around the four corners (posY down, posX right, posY up, posX left)."""
    m = {}
    for i in range(6):
        m[i], m[6 + i], m[12 + i] = (HEART, i, 0, 0, 0), (HEART, 5 - i, 0, 0, 0), (HEART, i, 0, 0, 0)
    for k in range(40):
        m[18 + k] = (HEART, 5, k, 0, 0)
    for k in range(32):
        m[58 + k] = (HEART, 5, 0, 0, k)
        m[90 + k] = (HEART, 5, 0, k, 31)
        m[122 + k] = (HEART, 5, 0, 31, 31 - k)
        m[154 + k] = (HEART, 5, 0, 31 - k, 0)
    for i in range(6):
        m[186 + i] = (HEART, 5 - i, 0, 0, 0)
    for shape, base in ((ELLIPSE, 192), (SQUARE, 256)):
        for i in range(6):
            m[base + i], m[base + 6 + i] = (shape, i, 0, 0, 0), (shape, 5 - i, 0, 0, 0)
            m[base + 12 + i], m[base + 58 + i] = (shape, i, 0, 0, 0), (shape, 5 - i, 0, 0, 0)
        for k in range(40):
            m[base + 18 + k] = (shape, 5, k, 0, 0)
    assert sorted(m) == list(range(320))
    return np.array([[0, *m[i]] for i in range(320)])


@pytest.mark.skipif(not os.path.exists(REFERENCE_GIF), reason="reference GIF not available")
def test_matches_reference_frames(ds):
    from PIL import Image, ImageSequence

    with Image.open(REFERENCE_GIF) as gif:
        frames = np.stack([np.array(f.convert("L")) > 127 for f in ImageSequence.Iterator(gif)])
    assert frames.shape == (320, 64, 64)
    rendered = ds.images_from_factors(_reference_frame_factors()).numpy()[:, 0] > 0.5
    inter = (rendered & frames).sum(axis=(1, 2))
    union = (rendered | frames).sum(axis=(1, 2))
    iou = inter / union
    identical = (rendered == frames).all(axis=(1, 2)).sum()
    # measured: mean 0.9987, min 0.9828, 270/320 identical
    assert iou.mean() >= 0.995, iou.mean()
    assert iou.min() >= 0.97, iou.min()
    assert identical >= 240, identical


# -------------------------------------------------------------------------------- loaders
def test_load_dsprites_subset():
    train = load_dsprites("train", n=300, seed=0)
    assert isinstance(train, ImageDataset) and len(train) == 300
    assert train.x.shape == (300, 1, 64, 64) and train.x.dtype == torch.float32
    factors = train.extras["factors"]
    assert factors.shape == (300, 6) and factors.dtype == torch.long
    assert torch.equal(train.y, factors[:, 1])
    assert torch.equal(DSprites().images(train.extras["index"]), train.x)
    again = load_dsprites("train", n=300, seed=0)
    assert torch.equal(again.extras["index"], train.extras["index"])
    test = load_dsprites("test", n=300, seed=0)
    assert not set(train.extras["index"].tolist()) & set(test.extras["index"].tolist())
    sub = train.subset(torch.arange(10))
    assert sub.extras["factors"].shape == (10, 6)
    with pytest.raises(ValueError):
        load_dsprites("validation", n=10)


def test_from_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        DSprites.from_npz(str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError):
        load_dsprites(n=10, root=str(tmp_path))
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(ValueError):
        DSprites.from_npz(str(corrupt))
    wrong = tmp_path / "wrong.npz"
    np.savez_compressed(wrong, imgs=np.zeros((4, 64, 64), np.uint8), latents_classes=np.zeros((4, 6), int))
    with pytest.raises(ValueError, match="shape"):
        DSprites.from_npz(str(wrong))
    partial = tmp_path / "partial.npz"
    np.savez_compressed(partial, imgs=np.zeros((4, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="latents_classes"):
        DSprites.from_npz(str(partial))
    truncated = tmp_path / "truncated.npz"
    with zipfile.ZipFile(wrong) as src, zipfile.ZipFile(truncated, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name)[:100])
    with pytest.raises(ValueError):
        DSprites.from_npz(str(truncated))
