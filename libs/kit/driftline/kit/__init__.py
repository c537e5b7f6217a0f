"""Shared plumbing for every Driftline service: settings, logging, errors, Kafka, gRPC, metrics."""
