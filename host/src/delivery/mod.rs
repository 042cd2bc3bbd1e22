//! Delivery: how failed work is retried.

pub mod group_commit;
pub mod retry_policy;
