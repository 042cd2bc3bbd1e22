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
    /// The endpoints: every connection an inbound trigger names or an inbound token is given for, with the
    /// connection of the first inbound flow (by flow file) where there is one. Inbound flows of one connection
    /// must use the same connector (it verifies and normalizes what all of them run for); each that does not is
    /// a problem.
    pub fn build(
        flows: &[Arc<LoadedFlow>],
        tokens: Vec<InboundConnection>,
    ) -> Result<HashMap<String, InboundEndpoint>, Vec<String>> {
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
        let mut problems = Vec::new();
        for name in names {
            let receiving: Vec<&Arc<LoadedFlow>> = flows
                .iter()
                .filter(
                    |flow| matches!(&flow.flow().trigger, Trigger::Inbound { connection, .. } if *connection == name),
                )
                .collect();
            // One connector verifies and normalizes what all of them run for.
            let connector = |flow: &LoadedFlow| flow.connection(&name).map(|(c, _)| c.manifest().id.clone());
            let config = |flow: &LoadedFlow| flow.flow().connections.get(&name).map(|c| c.config.clone());
            if let Some((first, others)) = receiving.split_first() {
                for other in others {
                    if connector(other) != connector(first) {
                        problems.push(format!(
                            "connection `{name}`: flows {} and {} both run for its inbound events with different \
                             connectors; one connector receives a connection's requests",
                            first.id(),
                            other.id()
                        ));
                    } else if config(other) != config(first) {
                        tracing::warn!(
                            connection = %name,
                            "flows {} and {} configure the connection differently; its inbound requests are \
                             received with the config of {}",
                            first.id(),
                            other.id(),
                            first.id()
                        );
                    }
                }
            }
            let flow =
                receiving.first().copied().or_else(|| flows.iter().find(|flow| flow.connection(&name).is_some()));
            if let Some(flow) = flow {
                let token = tokens.remove(&name);
                let endpoint = InboundEndpoint { flow: flow.clone(), name: name.clone(), token };
                if let Some(why) = endpoint.why_closed() {
                    tracing::warn!(connection = %name, "{why}: every inbound request to it is refused");
                }
                endpoints.insert(name, endpoint);
            }
        }
        if problems.is_empty() { Ok(endpoints) } else { Err(problems) }
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

    /// Why the connection cannot take inbound requests although it is configured to, if it cannot.
    pub fn why_closed(&self) -> Option<String> {
        match self.inbound() {
            Err(no_inbound_side) => Some(no_inbound_side.to_string()),
            Ok(info) if self.token.is_none() && !info.verifies_requests => Some(
                "it has inbound flows but no inbound token, and its connector does not verify requests itself".into(),
            ),
            Ok(_) => None,
        }
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
    /// The connector's answer.
    pub response: InboundResponse,
}
