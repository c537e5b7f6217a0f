"""Driftline trainer: turns drift reports, degradation events and manual requests into retrains.

One retrain builds a point-in-time-correct training set from the offline feature store and the
trainer's own label log, trains a LightGBM model, converts it to ONNX (checking parity with the
native model), evaluates it against the champion on the same recent holdout, registers it with
full lineage and promotes it by compare-and-swap only when it wins by the configured margin.
"""
