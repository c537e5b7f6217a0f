"""Driftline inference: gRPC predictions (driftline.inference.v1 and KServe v2) on ONNX Runtime,
with dynamic batching, hot swap from registry events and a non-blocking prediction log."""
