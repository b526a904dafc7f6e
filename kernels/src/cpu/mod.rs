//! CPU f32 reference implementations, one file per op.
