//! The accept of one inbound request: admitted before its body is read (connection, disconnect, token), then
//! handed to the connection's connector (`receive`), which parses and verifies it; the host stores the
//! normalized events once and answers with what the connector said.

use super::inbound_endpoint::{InboundEndpoint, InboundError, InboundReceipt};
use super::shared::Shared;
use crate::connector::InvokeError;
use crate::inbound::{InboundRequest, stored_body};
use crate::store::InboundMessage;

const TOKEN_REQUIRED: &str = "missing or wrong token: send `Authorization: Bearer <token>` or `Token <token>`";

/// Checks what can be checked before the body is read: the connection takes inbound requests, is not
/// disconnected, and the request carries its token (or the connector takes requests without it). Returns
/// whether the request is authenticated.
pub(crate) fn admit(shared: &Shared, connection: &str, authorization: Option<&str>) -> Result<bool, InboundError> {
    let endpoint = endpoint(shared, connection)?;
    let info = endpoint.inbound()?;
    if shared.active().stopped.values().any(|held| held == connection) {
        return Err(InboundError::Disconnected(connection.to_string()));
    }
    if endpoint.authenticated(authorization) {
        return Ok(true);
    }
    let open = match endpoint.token {
        Some(_) => !info.public_requests.is_empty(),
        None => info.verifies_requests,
    };
    match (open, &endpoint.token) {
        (true, _) => Ok(false),
        (false, Some(_)) => Err(InboundError::Unauthorized(TOKEN_REQUIRED.into())),
        (false, None) => Err(InboundError::Unauthorized(format!(
            "connection `{connection}` has no inbound token, and its connector does not verify requests itself: \
             give it `inbound_token` in flowhost.toml"
        ))),
    }
}

/// Hands an admitted request to the connection's connector and stores its events, once.
pub(crate) async fn receive(
    shared: &Shared,
    connection: &str,
    request: &InboundRequest,
) -> Result<InboundReceipt, InboundError> {
    let endpoint = endpoint(shared, connection)?;
    let (connector, wired) = endpoint.connector();
    let received = connector.receive(wired, request).await.result.map_err(refusal)?;
    if received.events.is_empty() {
        return Ok(InboundReceipt { id: None, events: 0, response: received.response });
    }
    // A public request (one without the token of a connection that has one) is answered, never stored.
    if !request.authenticated && endpoint.token.is_some() {
        return Err(InboundError::Unauthorized(format!(
            "{TOKEN_REQUIRED} ({} events in a request without the connection's token)",
            received.events.len()
        )));
    }
    let message = InboundMessage {
        connection: connection.to_string(),
        source: received.events[0].source.clone(),
        external_id: received.message_id.clone(),
        body: stored_body(&received.events),
    };
    let id = shared.store.record_inbound(&message).await?;
    shared.metrics.inbound_received();
    shared.inbound_waiting.notify_waiters();
    Ok(InboundReceipt { id: Some(id), events: received.events.len(), response: received.response })
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
