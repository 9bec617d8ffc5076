"""dSprites (Matthey et al., 2017, https://github.com/deepmind/dsprites-dataset): 737,280 binary 64x64 images of a
square, an ellipse or a heart over a full grid of six factors (color, shape, scale, orientation, posX, posY).

* :mod:`.factors`: the grid (factor names, sizes, values) and index <-> factor conversion;
* :mod:`.render`: the calibrated renderer (the official files are not bundled; :meth:`DSprites.from_npz` reads
  them when you have them);
* :mod:`.cache`: bit packing, in-memory sprite tables and the on-disk packed set;
* :mod:`.npz`: the official npz reader;
* :mod:`.dataset`: :class:`DSprites` and :func:`load_dsprites`.
"""
from .dataset import DSprites, load_dsprites
from .factors import DSPRITES_NPZ_NAME, FACTOR_NAMES, FACTOR_SIZES, NUM_IMAGES, SHAPE_NAMES

__all__ = ["DSprites", "load_dsprites", "DSPRITES_NPZ_NAME", "FACTOR_NAMES", "FACTOR_SIZES", "NUM_IMAGES",
           "SHAPE_NAMES"]
