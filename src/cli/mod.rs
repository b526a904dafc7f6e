//! One module per subcommand.

pub mod check;
pub mod dashboard;
pub mod devices;
pub mod generate;
pub mod import_gguf;
pub mod plot;
pub mod score;
pub mod train;
