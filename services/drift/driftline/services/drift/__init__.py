"""Drift service: watches the feature and prediction streams of the champion model for drift, and
joins delayed ground-truth labels to logged predictions to track live model performance."""
