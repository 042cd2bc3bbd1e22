//! Durable delivery: the service that accepts events and inbound requests into the store, the workers that
//! run, resend and dead-letter them, group commit, and the service's metrics.

mod completion_batch;
pub mod config;
pub mod group_commit;
mod inbound_accept;
mod inbound_endpoint;
mod inbound_worker;
mod integrity;
pub mod metrics;
mod retention;
mod run_worker;
pub mod service;
mod shared;

pub use config::{RetentionConfig, ServiceConfig, TraceRetention};
pub use inbound_accept::{Admission, PUBLIC_BODY_LIMIT};
pub use inbound_endpoint::{InboundConnection, InboundError, InboundReceipt};
pub use integrity::IntegrityStatus;
pub use service::{
    AcceptError, AcceptedEvent, AcceptedRun, ConnectionError, FailedRun, InboundMessageView, LoyaltyEvent, Service,
    ServiceError,
};
