"""Synthetic FIB-SEM data with ground truth: microstructures, BSE physics, imaging, datasets."""
