//! `mparticle-emulator`: runs the mParticle emulator until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use mparticle_emulator::{DEFAULT_LISTEN, DEMO_API_KEY, DEMO_API_SECRET, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};

/// Local emulator of mParticle's documented APIs (OAuth, Platform API, Events API).
#[derive(Debug, Parser)]
#[command(name = "mparticle-emulator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// OAuth client id accepted by POST /oauth/token.
    #[arg(long, default_value = DEMO_CLIENT_ID)]
    client_id: String,
    /// OAuth client secret.
    #[arg(long, default_value = DEMO_CLIENT_SECRET)]
    client_secret: String,
    /// Events API key (HTTP Basic user name).
    #[arg(long, default_value = DEMO_API_KEY)]
    api_key: String,
    /// Events API secret (HTTP Basic password).
    #[arg(long, default_value = DEMO_API_SECRET)]
    api_secret: String,
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = 28_800)]
    token_lifetime_secs: u64,
    /// Start without the seeded accounts, workspaces, audiences and calculated attributes.
    #[arg(long)]
    no_seed: bool,
    /// Provisioned throughput of every API key, in batches per second (mParticle: about 270); beyond it the
    /// Events API answers 429. Default: no limit.
    #[arg(long, value_name = "N")]
    batches_per_second: Option<u32>,
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
    let config = mparticle_emulator::EmulatorConfig {
        oauth_clients: vec![(args.client_id.clone(), args.client_secret.clone())],
        api_keys: vec![(args.api_key.clone(), args.api_secret.clone())],
        token_lifetime: Duration::from_secs(args.token_lifetime_secs),
        seed_data: !args.no_seed,
        batches_per_second: args.batches_per_second,
        ..Default::default()
    };
    let emu = mparticle_emulator::start(config, args.listen).await?;
    let url = emu.url();
    println!("mParticle emulator listening on {url}");
    println!("  OAuth client (Platform API): {} / {}   POST {url}/oauth/token", args.client_id, args.client_secret);
    println!("  Events API key:              {} / {}   POST {url}/v2/events", args.api_key, args.api_secret);
    println!("  Inspect: GET {url}/_emulator/batches, GET {url}/_emulator/stats");
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    emu.shutdown().await
}
