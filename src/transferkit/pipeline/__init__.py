"""A training run from a folder to a saved bundle: ``train(TrainConfig)`` and its probe, fine-tune and auto modes.

Types: :class:`~transferkit.pipeline.config.TrainConfig` in, :class:`~transferkit.pipeline.result.TrainResult` out.
"""
