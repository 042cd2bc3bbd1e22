//! Delivery: how failed work is retried.

pub mod retry_policy;
