//! One module per subcommand.

pub mod devices;
pub mod import_gguf;
pub mod dashboard;
pub mod plot;
