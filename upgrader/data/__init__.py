"""Datasets: readers (IDX, image folder, npz), item identities and the probe/training/gallery splits. No torch."""
