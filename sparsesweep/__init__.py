"""sparsesweep: reproduce and extend 'On Implicit Filter Level Sparsity in CNNs' (Mehta et al., CVPR 2019)."""
