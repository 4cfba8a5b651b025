"""Measuring a classifier: metrics, predictions over many files, test-time augmentation, the split to use, the HTML report."""
