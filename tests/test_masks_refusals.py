"""runtime.io.masks.read_mask refuses what is not a lossless label mask, in one sentence.

Real files written by Pillow: a JPEG's compression noise turned a 3-label mask into dozens of "labels".
"""

import numpy as np
import pytest
from PIL import Image

from runtime.errors import CoordGANError
from runtime.io.masks import read_mask


@pytest.fixture()
def labels():
    m = np.zeros((64, 80), np.uint8)
    m[8:40, 10:50] = 1
    m[30:60, 40:75] = 2
    return m


@pytest.mark.parametrize("name, save", [
    ("ref.jpg", {"format": "JPEG"}),
    ("ref.png", {"format": "JPEG"}),  # a JPEG under a .png name: the content decides, not the suffix
    ("ref.tif", {"format": "TIFF", "compression": "jpeg"}),
])
def test_a_lossy_mask_is_refused_whatever_its_name(tmp_path, labels, name, save):
    path = tmp_path / name
    Image.fromarray(labels * 100).save(path, **save)
    with Image.open(path) as img:  # the noise that used to become labels
        assert len(np.unique(np.asarray(img))) > 3
    with pytest.raises(CoordGANError, match=rf"^Reference mask .*{name} is a (JPEG|TIFF \(\w+\)) image, whose lossy "
                                            r"compression .* would read as labels; save the mask as a PNG\.$"):
        read_mask(path, what="Reference mask")


def test_a_lossless_mask_reads_its_labels(tmp_path, labels):
    for name in ("ref.png", "ref.tif"):
        Image.fromarray(labels).save(tmp_path / name)
        assert np.array_equal(read_mask(tmp_path / name)[0], labels)


def test_a_folder_is_not_a_missing_mask(tmp_path):
    """`--ref` an empty folder said "does not exist"."""
    folder = tmp_path / "masks"
    folder.mkdir()
    with pytest.raises(CoordGANError, match=r"^Reference mask .*masks is a folder, not a mask file; give a \.png"):
        read_mask(folder, what="Reference mask")
    with pytest.raises(CoordGANError, match=r"^Reference mask .*nothing.png does not exist\.$"):
        read_mask(tmp_path / "nothing.png", what="Reference mask")
