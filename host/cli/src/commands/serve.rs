//! `flowhost serve --config flowhost.toml [--store PATH|URL]`: the durable service behind its HTTP API, until SIGINT or
//! SIGTERM.

use crate::GlobalOptions;
use anyhow::Context as _;
use flowhost::Host;
use flowhost::delivery::Service;
use flowhost::server::config::ServeConfig;
use flowhost::server::{ApiState, router};
use flowhost::store::StoreLocation;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub async fn serve(
    config_path: &Path,
    store: Option<String>,
    options: &GlobalOptions,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let config = ServeConfig::load(config_path)?;
    let secrets = options.secrets()?;
    let inbound = config.inbound_connections(&secrets).map_err(anyhow::Error::msg)?;
    let api_token = config.api_token(&secrets).map_err(anyhow::Error::msg)?;
    let metrics_token = config.metrics_token(&secrets).map_err(anyhow::Error::msg)?;
    // Checked before anything listens: an open API goes on loopback only, unless the operator says otherwise.
    config.check_listen(config.listen, api_token.is_some()).map_err(anyhow::Error::msg)?;
    let limits = config.server.limits().map_err(anyhow::Error::msg)?;
    let flow_files = config.flow_files()?;
    // Flows reference only the secrets the operator lets them (`[secrets]`); this file's own references are the
    // operator's, resolved above from everything.
    let flow_secrets = config.secrets.for_flows(&secrets);
    let host =
        Host::new(config.host_config(options.runtime_config(), crate::builtin::COMPONENTS), flow_secrets).await?;
    // `--store`: a path is relative to the working directory, as paths on the command line are.
    let store_location = match store {
        Some(store) => StoreLocation::parse(&store)?,
        None => config.store_location()?,
    };
    let store = store_location.open().await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    if api_token.is_none() && !address.ip().is_loopback() {
        tracing::warn!(%address, "insecure = true: the API has no api_token and listens beyond loopback: anyone who reaches it can send events and manage the queue");
    }
    let service_config = config.service_config().map_err(anyhow::Error::msg)?;
    let service = Arc::new(Service::start(host, store.clone(), &flow_files, inbound, service_config).await?);
    let (running, stopped) = service.flows();
    writeln!(
        out,
        "flowhost serving on http://{address} ({} flows running, {} stopped by a disconnect; store {})",
        running.len(),
        stopped.len(),
        store_location
    )?;
    out.flush()?;
    let state = ApiState {
        service: service.clone(),
        max_body_bytes: config.max_body_bytes,
        api_token: api_token.map(Arc::new),
        metrics_token: metrics_token.map(Arc::new),
    };
    flowhost::server::serve(listener, router(state), limits, shutdown_signal()).await?;
    writeln!(out, "shutting down: finishing runs in flight, leaving the rest queued")?;
    service.shutdown(Duration::from_secs(config.delivery.shutdown_grace_seconds)).await;
    store.close().await;
    writeln!(out, "stopped")?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
