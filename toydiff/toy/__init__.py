"""The 2D world with exact answers: Gaussian mixtures, datasets, MLP denoisers and their trainer, the model zoo,
exact densities, histograms and metrics."""
