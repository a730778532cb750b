"""The only package that imports torch: the networks (simplex, models), the losses and what a step
minimises (losses, anchor, objective), the loop and its pieces (config, schedule, batches, checkpoint,
distributed), calibration, ONNX export, and the train-export-register pipeline.
``python -m upgrader.training --config cfg.json`` trains from files, also under torchrun."""
