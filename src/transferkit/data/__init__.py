"""Datasets: five layouts to one :class:`ImageSet`, robust decoding, verified and split reproducibly."""

from transferkit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, load_for_spec, open_rgb
from transferkit.data.formats import FORMATS, detect_format
from transferkit.data.imageset import DataReport, ImageSet, Rejected
from transferkit.data.inspect import describe_imageset
from transferkit.data.load import load_images
from transferkit.data.split import split_imageset

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "DataReport",
    "ImageDecodeError",
    "ImageSet",
    "Rejected",
    "describe_imageset",
    "detect_format",
    "load_for_spec",
    "load_images",
    "open_rgb",
    "split_imageset",
]
