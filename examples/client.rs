//! A client: one endpoint (one UDP socket), one connection, a few concurrent requests.
//!
//! `cargo run --example client -- https://localhost:4433/` against `troupe serve` (which uses a
//! self-signed certificate, so verification is off here: do not copy that into production).

use troupe::h3::{Body, ClientEndpoint, H3Settings};
use troupe::transport::{QuicSettings, TlsConfig, Verify};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url: http::Uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "https://localhost:4433/".into())
        .parse()?;
    let host = url.host().ok_or("URL has no host")?.to_string();
    let port = url.port_u16().unwrap_or(443);
    let peer = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or("no address")?;
    let tls = TlsConfig {
        identity: None,
        verify: Verify::Insecure,
    };
    let ep = ClientEndpoint::bind(
        "0.0.0.0:0".parse()?,
        QuicSettings::default(),
        tls,
        H3Settings::default(),
    )
    .await?;
    let client = ep.connect(peer, &host).await?;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        let req = http::Request::get(url.clone()).body(Body::empty())?;
        tasks.push(tokio::spawn(async move {
            let resp = client.send(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body.len()))
        }));
    }
    for t in tasks {
        let (status, len) = t.await?.map_err(|e| e.to_string())?;
        println!("{status}: {len} bytes");
    }
    client.close();
    Ok(())
}
