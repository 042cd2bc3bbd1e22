//! The accept of one inbound request: admitted before its body is read (connection, disconnect, token), then
//! handed to the connection's connector (`receive`), which parses and verifies it; the host stores the
//! normalized events once and answers with what the connector said.

use super::inbound_endpoint::{InboundEndpoint, InboundError, InboundReceipt};
use super::shared::Shared;
use crate::connector::InvokeError;
use crate::inbound::{InboundRequest, stored_body};
use crate::store::InboundMessage;

const TOKEN_REQUIRED: &str = "missing or wrong token: send `Authorization: Bearer <token>` or `Token <token>`";

/// The most a request without the connection's token may send (a registration, a verification probe): the
/// body of a public request is read and handed to the connector, so it is kept small.
pub const PUBLIC_BODY_LIMIT: usize = 64 * 1024;

/// An inbound request admitted before its body was read, by [`admit`]; only [`receive`] takes it, so that no
/// request reaches a connector without being admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    connection: String,
    authenticated: bool,
    /// A connection with a token admitted the request without it: a public request (never stored).
    public: bool,
}

impl Admission {
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// Whether the request carried the connection's token.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// The most body bytes to read, within the service's own `limit`.
    pub fn body_limit(&self, limit: usize) -> usize {
        if self.public { limit.min(PUBLIC_BODY_LIMIT) } else { limit }
    }
}

/// Checks what can be checked before the body is read: the connection takes inbound requests and is not
/// disconnected, and the request carries the connection's token, compared in constant time. Without the token
/// it is admitted only as a public request (no `Authorization` at all, and the connector declares public
/// requests) or, on a connection that has no token, when the connector verifies requests itself. A wrong
/// token is refused whatever the connector declares.
pub(crate) fn admit(shared: &Shared, connection: &str, authorization: Option<&str>) -> Result<Admission, InboundError> {
    let endpoint = endpoint(shared, connection)?;
    let info = endpoint.inbound()?;
    if disconnected(shared, connection) {
        return Err(InboundError::Disconnected(connection.to_string()));
    }
    let admitted = |authenticated, public| Admission { connection: connection.to_string(), authenticated, public };
    let presented = authorization.is_some_and(|value| !value.trim().is_empty());
    match &endpoint.token {
        Some(_) if endpoint.authenticated(authorization) => Ok(admitted(true, false)),
        Some(_) if !presented && !info.public_requests.is_empty() => Ok(admitted(false, true)),
        Some(_) => Err(InboundError::Unauthorized(TOKEN_REQUIRED.into())),
        // Without a token of its own, the connection is open only if its connector verifies each request.
        None => match endpoint.why_closed() {
            None => Ok(admitted(false, false)),
            Some(why) => Err(InboundError::Unauthorized(format!(
                "connection `{connection}` takes no inbound requests: {why}; give it `inbound_token` in flowhost.toml"
            ))),
        },
    }
}

/// Hands an admitted request to the connection's connector and stores its events, once. The request is
/// authenticated as its admission says, whatever `request` says.
pub(crate) async fn receive(
    shared: &Shared,
    admission: &Admission,
    request: InboundRequest,
) -> Result<InboundReceipt, InboundError> {
    let connection = admission.connection.as_str();
    let endpoint = endpoint(shared, connection)?;
    // A disconnect may have come between the admission and now.
    if disconnected(shared, connection) {
        return Err(InboundError::Disconnected(connection.to_string()));
    }
    let request = InboundRequest { authenticated: admission.authenticated, ..request };
    let (connector, wired) = endpoint.connector();
    let received = connector.receive(wired, request).await.result.map_err(refusal)?;
    let Some(first) = received.events.first() else {
        return Ok(InboundReceipt { id: None, response: received.response });
    };
    if admission.public {
        return Err(InboundError::Unauthorized(format!(
            "{TOKEN_REQUIRED} ({} events in a request without the connection's token)",
            received.events.len()
        )));
    }
    let message = InboundMessage {
        connection: connection.to_string(),
        source: first.source.clone(),
        external_id: received.message_id.clone(),
        body: stored_body(&received.events),
    };
    let id = shared.store.record_inbound(&message).await?;
    shared.metrics.inbound_received();
    shared.inbound_waiting.notify_waiters();
    Ok(InboundReceipt { id: Some(id), response: received.response })
}

fn disconnected(shared: &Shared, connection: &str) -> bool {
    shared.active().stopped.values().any(|held| held == connection)
}

fn endpoint<'a>(shared: &'a Shared, connection: &str) -> Result<&'a InboundEndpoint, InboundError> {
    shared.inbound.get(connection).ok_or_else(|| InboundError::UnknownConnection(connection.to_string()))
}

/// How a connector's refusal of a request reaches the sender.
fn refusal(error: InvokeError) -> InboundError {
    match error {
        InvokeError::InvalidInput { errors } => InboundError::Malformed(errors),
        InvokeError::Unauthorized { message } => InboundError::Unauthorized(message),
        other => InboundError::Connector(other),
    }
}
