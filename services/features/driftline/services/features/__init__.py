"""The features service: clean transactions in, windowed per-card features out.

A faust-streaming app. Each batch of ``transactions.clean.v1`` events goes through the feature
store's aggregation engine against per-card state held in Redis; the newest values land in the
online store (guarded by event time), a ``FeatureVector`` per event goes to
``features.vectors.v1``, and a second agent appends those vectors to the offline Parquet store.
"""
