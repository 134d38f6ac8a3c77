"""The operators' numba hot paths: window kernels (`windows`) and key interning and hashing (`keys`)."""
