//! What `POST /v1/inbound/{connection}` reaches: the connections that take inbound requests, their tokens, and
//! the errors and receipts of their requests (the accept itself is in `inbound_accept`).
//!
//! Who may send: a connection with an inbound token requires it on every request, except the requests its
//! connector declares public (e.g. a registration), which are answered but never stored. A connection without
//! a token takes requests only when its connector verifies each one itself (e.g. an HMAC signature).

use crate::connector::secrets::token_matches;
use crate::connector::{Connection, Connector, FieldError, InvokeError};
use crate::flow::{LoadedFlow, Trigger};
use crate::inbound::{InboundInfo, InboundResponse};
use crate::store::StoreError;
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Arc;

/// An inbound connection's token, as configured (`[connections.<name>] inbound_token` in `flowhost.toml`).
pub struct InboundConnection {
    pub name: String,
    pub token: SecretString,
}

impl std::fmt::Debug for InboundConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundConnection").field("name", &self.name).field("token", &"<secret>").finish()
    }
}

/// A connection that takes inbound requests: the flow whose connection (connector and config) receives them,
/// and its token.
pub(crate) struct InboundEndpoint {
    flow: Arc<LoadedFlow>,
    name: String,
    pub(super) token: Option<SecretString>,
}

impl InboundEndpoint {
    /// The endpoints: every connection an inbound trigger names or an inbound token is given for. The
    /// connection of an inbound flow is preferred, where flows configure one name differently.
    pub fn build(flows: &[Arc<LoadedFlow>], tokens: Vec<InboundConnection>) -> HashMap<String, InboundEndpoint> {
        let mut tokens: HashMap<String, SecretString> = tokens.into_iter().map(|c| (c.name, c.token)).collect();
        let mut names: Vec<String> = flows
            .iter()
            .filter_map(|flow| match &flow.flow().trigger {
                Trigger::Inbound { connection, .. } => Some(connection.clone()),
                Trigger::Event { .. } => None,
            })
            .chain(tokens.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        let mut endpoints = HashMap::new();
        for name in names {
            let receives = |flow: &&Arc<LoadedFlow>| matches!(&flow.flow().trigger, Trigger::Inbound { connection, .. } if *connection == name);
            let flow =
                flows.iter().find(receives).or_else(|| flows.iter().find(|flow| flow.connection(&name).is_some()));
            if let Some(flow) = flow {
                let token = tokens.remove(&name);
                endpoints.insert(name.clone(), InboundEndpoint { flow: flow.clone(), name, token });
            }
        }
        endpoints
    }

    /// The connector that receives this connection's requests, and the connection.
    pub fn connector(&self) -> (&Arc<Connector>, &Connection) {
        self.flow.connection(&self.name).expect("an endpoint's flow has its connection")
    }

    pub(super) fn inbound(&self) -> Result<&InboundInfo, InboundError> {
        let (connector, _) = self.connector();
        connector.inbound().ok_or_else(|| InboundError::NoInboundSide {
            connection: self.name.clone(),
            connector: connector.manifest().id.clone(),
        })
    }

    /// Whether the request's `Authorization` (`Bearer <token>` or `Token <token>`) carries this connection's
    /// token, compared in constant time.
    pub(super) fn authenticated(&self, authorization: Option<&str>) -> bool {
        let presented = authorization
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("Token ")))
            .map(str::trim)
            .unwrap_or_default();
        match &self.token {
            Some(token) => !presented.is_empty() && token_matches(presented, token),
            None => false,
        }
    }
}

/// Why an inbound request was refused. Nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("no connection `{0}` takes inbound requests (no inbound flow uses it and it has no inbound token)")]
    UnknownConnection(String),
    #[error(
        "connection `{connection}` cannot take inbound requests: its connector `{connector}` has no inbound side (it does not export `receive`)"
    )]
    NoInboundSide { connection: String, connector: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("connection `{0}` is disconnected; it takes no inbound messages until it is reconnected")]
    Disconnected(String),
    /// The connector found the request malformed; each field is named by its JSON pointer.
    #[error("malformed request: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Malformed(Vec<FieldError>),
    /// The connector failed (a trap, a timeout, the memory limit, a broken contract) or refused otherwise.
    #[error("the connector could not receive the request: {0}")]
    Connector(InvokeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the sender gets back for a request the connector received.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundReceipt {
    /// The stored message's id; `None` when the request carried no events (nothing was stored).
    pub id: Option<String>,
    /// How many events were stored.
    pub events: usize,
    /// The connector's answer.
    pub response: InboundResponse,
}
