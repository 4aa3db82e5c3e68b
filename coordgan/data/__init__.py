"""Datasets. Torch-free at import: the synthetic faces need only numpy and Pillow."""

from coordgan.data.synthetic_dataset import SyntheticFaces, write_image_folder
from coordgan.data.synthetic_faces import (
    PALETTE,
    PART_NAMES,
    FaceParams,
    colorize,
    face_coordinates,
    face_params,
    make_images,
    make_sequence,
    render,
    sample_params,
)

__all__ = [
    "PALETTE",
    "PART_NAMES",
    "FaceParams",
    "SyntheticFaces",
    "colorize",
    "face_coordinates",
    "face_params",
    "make_images",
    "make_sequence",
    "render",
    "sample_params",
    "write_image_folder",
]
