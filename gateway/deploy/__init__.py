"""Registry versions become running backends: the deploy service, registry
access, launchers, baselines, the demo model."""
