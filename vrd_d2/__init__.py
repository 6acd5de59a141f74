"""vrd_d2: visual relationship detection with low-rank non-negative tensor decomposition."""
