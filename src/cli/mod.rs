//! One module per subcommand.

pub mod devices;
pub mod dashboard;
pub mod plot;
