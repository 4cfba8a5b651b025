"""A torch-free runtime for exported models: numpy, Pillow and onnxruntime only.

``Runtime("model.onnx").predict(paths_or_images, top_k=3)`` decodes, resizes and crops each image
exactly as the bundle it was exported from does, and returns the top classes. From a shell:
``python -m transferkit.runtime model.onnx photos/``. Install just what it needs with
``pip install numpy Pillow onnxruntime`` plus transferkit without its dependencies
(``pip install --no-deps transferkit``).
"""

from transferkit.runtime.decode import (
    DEFAULT_MAX_PIXELS,
    Geometry,
    ImageInputError,
    ImageTooLargeError,
    decode_image,
    load_pixels,
)
from transferkit.runtime.model import (
    INPUT_NAME,
    LAYOUT,
    METADATA_KEY,
    OUTPUT_NAME,
    ModelFileError,
    Prediction,
    Runtime,
    expand_paths,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "INPUT_NAME",
    "LAYOUT",
    "METADATA_KEY",
    "OUTPUT_NAME",
    "Geometry",
    "ImageInputError",
    "ImageTooLargeError",
    "ModelFileError",
    "Prediction",
    "Runtime",
    "decode_image",
    "expand_paths",
    "load_pixels",
]
