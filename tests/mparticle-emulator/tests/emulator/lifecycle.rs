//! Starting, stopping and the binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, client};

#[tokio::test]
async fn url_and_shutdown() {
    let emu = common::start().await;
    let addr = emu.addr();
    assert!(addr.ip().is_loopback());
    assert_eq!(emu.url(), format!("http://127.0.0.1:{}", addr.port()));
    assert_eq!(client().get(format!("{}/_emulator/health", emu.url())).send().await.unwrap().status(), 200);
    emu.shutdown().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "port closed after shutdown");
}

#[tokio::test]
async fn dropping_stops_the_server() {
    let emu = common::start().await;
    let addr = emu.addr();
    let handle = emu.handle();
    drop(emu);
    let mut closed = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "listener still open after drop");
    assert_eq!(handle.stats().received, 0, "handles outlive the server");
}

#[tokio::test]
async fn binding_a_used_port_fails_cleanly() {
    let emu = common::start().await;
    let err = mparticle_emulator::start(Default::default(), emu.addr()).await.unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
}

#[tokio::test]
async fn the_binary_prints_its_url_and_credentials() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mparticle-emulator"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().take(3).collect::<Result<Vec<_>, _>>().unwrap()
    })
    .await
    .unwrap();
    let url = lines[0].rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{lines:?}");
    assert!(lines[1].contains("demo-client-id / demo-client-secret"), "{lines:?}");
    assert!(lines[2].contains("demo-api-key / demo-api-secret"), "{lines:?}");
    let status = client().get(format!("{url}/_emulator/health")).send().await.unwrap().status();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200);
}
