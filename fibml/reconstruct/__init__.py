"""From a segmented stack of slices of varying thickness to an isotropic volume:
thickness measurement (ruler marks), repositioning on a fine grid, interpolation in z."""
