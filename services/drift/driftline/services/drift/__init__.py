"""Drift service: watches the feature and prediction streams of the champion model for drift, and
joins delayed ground-truth labels to logged predictions to track live model performance."""

import os

# alibi-detect imports transformers, whose import prints a plain-text advisory through a handler
# of its own ("None of PyTorch, TensorFlow ... have been found"): this service uses neither, and
# its logs are JSON.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
