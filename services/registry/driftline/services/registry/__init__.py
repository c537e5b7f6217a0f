"""The model registry: versioned ONNX models with lineage, compare-and-swap aliases, a hash-chained
audit log, experiment runs, and change events published through a transactional outbox."""
