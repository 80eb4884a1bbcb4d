"""Supervision of model backends: desired state, life cycle, placement.

This package knows nothing about HTTP routing or MLflow; the gateway hands it a
placement (for local child processes, one with a command factory) and reads its
routing table.
"""
