//! The experiment config (TOML): schema, loading with `--set` overrides, and validation.

mod load;
mod schema;
mod validate;

pub use load::{apply_override, from_value, load, parse};
pub use schema::*;
pub use validate::validate;

#[cfg(test)]
mod tests;
