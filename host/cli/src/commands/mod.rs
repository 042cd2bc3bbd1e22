//! One module per command.

pub mod bench;
pub mod connector;
pub mod flow;
pub mod queue;
pub mod serve;
