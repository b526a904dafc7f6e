//! Public ops: shapes, checks and dispatch to the CPU or CUDA backend. One file per op.
