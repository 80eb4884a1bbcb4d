"""Model quality: metrics from ground truth, drift of inputs, degradation reports."""
