"""Ingestion: the gate between producers and the clean transaction stream."""
