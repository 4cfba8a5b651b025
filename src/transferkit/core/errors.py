"""Errors a user can act on.

Every error the CLI knows how to report derives from :class:`TransferkitError`; the CLI prints its
message as one line and exits with code 1 (the full traceback with ``TRANSFERKIT_DEBUG=1``).
Messages say what is wrong and what to do.
"""

from __future__ import annotations


class TransferkitError(Exception):
    """Base class for errors with a message meant for the user."""


class UnknownNameError(TransferkitError, KeyError):
    """A registry lookup found nothing under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(TransferkitError):
    """Pretrained weights could not be found, read or matched to the model."""


class DataError(TransferkitError):
    """A dataset could not be read or has no usable images."""


class BundleError(TransferkitError):
    """A saved model bundle is missing, corrupt or tampered with."""
