//! The smallest troupe server: an async handler run inside each request's stream actor.
//!
//! `cargo run --example hello_server`, then
//! `cargo run -p troupe-cli -- get https://localhost:4433/ --insecure`.

use troupe::h3::{Body, RecvBody, Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::bind(
        "127.0.0.1:4433".parse()?,
        ServerConfig::default(),
        |req: http::Request<RecvBody>| async move {
            // Read the request body (bounded by credit), answer with its size.
            let n = req
                .into_body()
                .collect()
                .await
                .map(|b| b.len())
                .unwrap_or(0);
            http::Response::new(Body::from(format!("hello; you sent {n} bytes\n")))
        },
    )
    .await?;
    println!(
        "listening on {} (self-signed certificate for localhost)",
        server.local_addr()
    );
    tokio::signal::ctrl_c().await?;
    server
        .shutdown_gracefully(std::time::Duration::from_secs(10))
        .await;
    Ok(())
}
