"""Process supervision for model backends: ports, child lifecycle, desired state.

This package knows nothing about HTTP routing or MLflow; the gateway hands it a
command factory and reads its routing table.
"""
