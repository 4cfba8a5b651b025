"""A trained classifier: the model (``ClassifierModel``, ``TrainedModel``), bundle read/write, ImageNet classification, ONNX export."""
