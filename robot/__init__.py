"""The SO-101 side: simulated and real arm, cameras, and the model-predictive controller."""
