//! `antavo-emulator`: runs the Antavo emulator until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use antavo_emulator::{
    DEFAULT_LISTEN, DEFAULT_REGION, DEMO_API_KEY, DEMO_API_SECRET, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, EmulatorConfig,
    WebhookSubscription,
};
use clap::Parser;

/// Local emulator of Antavo's documented APIs (Escher-signed Events and Customer APIs, Async Events with
/// OAuth) that also sends Antavo's webhooks.
#[derive(Debug, Parser)]
#[command(name = "antavo-emulator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The environment label (api.<region>.antavo.com), the Escher signing region.
    #[arg(long, default_value = DEFAULT_REGION)]
    region: String,
    /// API key (Escher).
    #[arg(long, default_value = DEMO_API_KEY)]
    api_key: String,
    /// API secret.
    #[arg(long, default_value = DEMO_API_SECRET)]
    api_secret: String,
    /// OAuth client id (Async Events).
    #[arg(long, default_value = DEMO_CLIENT_ID)]
    client_id: String,
    /// OAuth client secret.
    #[arg(long, default_value = DEMO_CLIENT_SECRET)]
    client_secret: String,
    /// Requests per minute per API key before 429.
    #[arg(long, default_value_t = 1500)]
    rate_limit: u32,
    /// Allowed clock skew of signed requests, in seconds.
    #[arg(long, default_value_t = 300)]
    clock_skew_secs: u64,
    /// Accept a bare api_key query parameter without a signature.
    #[arg(long)]
    allow_unsigned: bool,
    /// Post a webhook for every accepted event to this URL, signed with Escher with the API key and secret
    /// (e.g. http://127.0.0.1:8080/v1/inbound/antavo).
    #[arg(long)]
    webhook_url: Option<String>,
    /// The actions the webhook is sent for, comma-separated (default: every action).
    #[arg(long, value_delimiter = ',')]
    webhook_actions: Vec<String>,
    /// Start without the seed customers.
    #[arg(long)]
    no_seed: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let webhooks = args
        .webhook_url
        .iter()
        .map(|url| {
            let actions: Vec<&str> = args.webhook_actions.iter().map(String::as_str).collect();
            WebhookSubscription::escher(url.clone(), &actions, &args.api_key, &args.api_secret)
        })
        .collect();
    let config = EmulatorConfig {
        region: args.region.clone(),
        api_keys: vec![(args.api_key.clone(), args.api_secret.clone())],
        oauth_clients: vec![(args.client_id.clone(), args.client_secret.clone())],
        rate_limit_per_minute: args.rate_limit,
        clock_skew: Duration::from_secs(args.clock_skew_secs),
        allow_unsigned: args.allow_unsigned,
        seed_data: !args.no_seed,
        webhooks,
        ..Default::default()
    };
    let emu = antavo_emulator::start(config, args.listen).await?;
    let url = emu.url();
    println!("Antavo emulator listening on {url} (region {})", args.region);
    println!("  API key (Escher):  {} / {}   POST {url}/events", args.api_key, args.api_secret);
    println!("  OAuth client:      {} / {}   POST {url}/v1/auth/token", args.client_id, args.client_secret);
    if let Some(webhook) = &args.webhook_url {
        println!("  Webhooks to:       {webhook}");
    }
    println!("  Inspect: GET {url}/_emulator/events, GET {url}/_emulator/requests, GET {url}/_emulator/stats");
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    emu.shutdown().await
}
