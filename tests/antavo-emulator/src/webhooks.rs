//! Antavo's webhooks out: for each event the workspace accepts, a POST to every subscription whose actions
//! include it, signed as the subscription says, delivered one at a time in acceptance order, retried like a
//! Trusted site delivery (5 attempts, 10 s apart by default).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::state::{AcceptedEvent, DeliveryRecord, Shared, lock};
use crate::{WebhookSigning, WebhookSubscription};

/// One webhook to deliver.
pub struct Delivery {
    /// Where and how.
    pub subscription: WebhookSubscription,
    /// The event it carries.
    pub event_id: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The body of a webhook: the shape of an Antavo event, as a Workflow "Webhook message" node is set up to post
/// it (Antavo fixes no envelope): `id`, `action`, `customer` (the customer after the event), `data`,
/// `timestamp`, `account`.
pub fn envelope(accepted: &AcceptedEvent, customer: &Value) -> Value {
    let mut customer = customer.clone();
    if let Some(c) = customer.as_object_mut() {
        c.remove("events");
    }
    json!({
        "id": accepted.id,
        "action": accepted.action,
        "customer": customer,
        "data": accepted.data,
        "timestamp": crate::time::iso(accepted.received_unix_ms / 1000),
        "account": null,
    })
}

/// Queues the webhooks of an accepted event.
pub(crate) fn enqueue(shared: &Shared, accepted: &AcceptedEvent, customer: &Value) {
    let subscriptions: Vec<WebhookSubscription> = lock(&shared.subscriptions)
        .iter()
        .filter(|s| s.actions.is_empty() || s.actions.contains(&accepted.action))
        .cloned()
        .collect();
    if subscriptions.is_empty() {
        return;
    }
    let body = envelope(accepted, customer).to_string().into_bytes();
    let queue = lock(&shared.webhook_queue).clone();
    let Some(queue) = queue else { return };
    for subscription in subscriptions {
        shared.webhooks_pending.fetch_add(1, Ordering::SeqCst);
        let delivery = Delivery { subscription, event_id: accepted.id.clone(), body: body.clone() };
        if queue.send(delivery).is_err() {
            shared.webhooks_pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Starts the delivery worker.
pub(crate) fn start(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
    *lock(&shared.webhook_queue) = Some(sender);
    tokio::spawn(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client for webhooks");
        while let Some(delivery) = receiver.recv().await {
            deliver(&shared, &client, &delivery).await;
            shared.webhooks_pending.fetch_sub(1, Ordering::SeqCst);
        }
    })
}

async fn deliver(shared: &Shared, client: &reqwest::Client, delivery: &Delivery) {
    let subscription = &delivery.subscription;
    for attempt in 1..=subscription.max_attempts.max(1) {
        let now_ms = shared.now_ms();
        let mut request = client
            .post(&subscription.url)
            .header("content-type", "application/json")
            .header("user-agent", "antavo-emulator-webhooks")
            .body(delivery.body.clone());
        match &subscription.signing {
            WebhookSigning::Escher { key, secret } => {
                let scope = format!("{}/api/antavo_request", shared.config.region);
                let (date, authorization) = crate::escher::sign(
                    "ANTAVO",
                    &scope,
                    key,
                    secret,
                    "POST",
                    &subscription.url,
                    &delivery.body,
                    now_ms / 1000,
                );
                request = request.header("date", date).header("authorization", authorization);
            }
            WebhookSigning::Bearer { token } => request = request.header("authorization", format!("Bearer {token}")),
            WebhookSigning::None => {}
        }
        let outcome = request.send().await;
        let (status, error) = match outcome {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        lock(&shared.deliveries).push(DeliveryRecord {
            event_id: delivery.event_id.clone(),
            url: subscription.url.clone(),
            attempt,
            status,
            error,
            unix_ms: now_ms,
        });
        if status.is_some_and(|s| (200..300).contains(&s)) {
            shared.count(|s| s.webhooks_delivered += 1);
            return;
        }
        shared.count(|s| s.webhook_attempts_failed += 1);
        if attempt < subscription.max_attempts {
            tokio::time::sleep(Duration::from_millis(subscription.retry_interval_ms)).await;
        }
    }
    tracing::warn!(url = %subscription.url, event = %delivery.event_id, "webhook delivery failed for good");
}
