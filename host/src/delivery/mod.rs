//! Durable delivery: the service that accepts events and inbound messages into the store, the workers that
//! run, resend and dead-letter them, the retry policy, group commit, and the service's metrics.

mod completion_batch;
pub mod group_commit;
mod inbound_worker;
pub mod metrics;
pub mod retry_policy;
mod run_worker;
pub mod service;

pub use inbound_worker::DEFAULT_CUSTOMER_IDENTITY;
pub use service::{
    AcceptError, AcceptedEvent, AcceptedRun, ConnectionError, InboundConnection, InboundError, InboundReceipt,
    LoyaltyEvent, Service, ServiceConfig, ServiceError, TraceRetention,
};
