"""The only package that imports torch: simplex, models, losses, the training loop, calibration, export and the train-export-register pipeline."""
