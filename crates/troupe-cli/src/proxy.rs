//! `troupe proxy` (a CONNECT-UDP proxy) and `troupe udp-tunnel` (a local UDP port forwarded
//! through one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use troupe::h3::ServerConfig;
use troupe::masque::egress::{Allow, EgressPolicy, IpNet};
use troupe::masque::template::{parse_target, UdpTemplate, DEFAULT_TEMPLATE};
use troupe::masque::{ConnectUdp, ProxyConfig, UdpTunnel};
use troupe::transport::{QuicSettings, TlsConfig};

use crate::Signals;

#[derive(Args)]
pub(crate) struct ProxyArgs {
    /// UDP address to listen on; repeatable. Default: 127.0.0.1:4433 and [::1]:4433.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// PEM certificate chain (leaf first). Without it a self-signed one is generated.
    #[arg(long, requires = "key", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert", value_name = "PEM")]
    key: Option<PathBuf>,
    /// Let flows reach this range (CIDR), address, or HOST:PORT, even if it is one of the
    /// ranges refused by default (loopback, private, link-local, ...); repeatable.
    #[arg(long, value_name = "CIDR|HOST:PORT", value_parser = |s: &str| s.parse::<Allow>())]
    allow: Vec<Allow>,
    /// Refuse flows to this range (CIDR) too; wins over --allow; repeatable.
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    deny: Vec<IpNet>,
    /// Require `Authorization: Bearer TOKEN` on every CONNECT-UDP request.
    #[arg(long, env = "TROUPE_PROXY_TOKEN", value_name = "TOKEN")]
    token: Option<String>,
    /// The URI template requests must match (RFC 6570, with {target_host} and {target_port}).
    #[arg(long, default_value = DEFAULT_TEMPLATE, value_name = "URI")]
    template: String,
    /// Flows one connection may hold at once.
    #[arg(long, default_value_t = 100, value_name = "N")]
    max_flows_per_conn: usize,
    /// Close a flow after this many seconds without a datagram either way.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    flow_idle_timeout: f64,
    /// Datagrams per second one flow may send to its target; more are dropped and counted.
    #[arg(long, value_name = "PPS")]
    flow_rate: Option<u32>,
    /// Turn QUIC DATAGRAM frames off: flows use DATAGRAM capsules on their streams.
    #[arg(long)]
    no_datagrams: bool,
    /// On SIGINT/SIGTERM, how long flows may take to end before connections are closed.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    drain_timeout: u64,
    /// Endpoint workers: threads that each own a UDP socket on the port (SO_REUSEPORT), a
    /// receive loop, and every actor (connections, streams, flows) of the connections they
    /// accept; 1 runs the whole proxy on one thread. Default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) workers: Option<u16>,
    #[command(flatten)]
    admin: crate::AdminArgs,
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR range or address (e.g. 192.0.2.0/24)"))
}

pub(crate) async fn proxy(a: ProxyArgs) -> Result<()> {
    let mut signals = Signals::new()?;
    let template = UdpTemplate::parse(&a.template).map_err(|e| anyhow!("--template: {e}"))?;
    if !(a.flow_idle_timeout.is_finite() && a.flow_idle_timeout > 0.0) {
        bail!(
            "--flow-idle-timeout {}: give a number of seconds above 0",
            a.flow_idle_timeout
        );
    }
    if a.max_flows_per_conn == 0 {
        bail!("--max-flows-per-conn 0 would refuse every flow; give 1 or more");
    }
    let mut pc = ProxyConfig::default();
    pc.template = template;
    pc.token = a.token.clone();
    pc.max_flows_per_connection = a.max_flows_per_conn;
    pc.flow.idle_timeout = Duration::from_secs_f64(a.flow_idle_timeout);
    pc.flow.rate.packets_per_sec = a.flow_rate;
    // The proxy's own addresses are refused (unless allowed): a flow must not loop back in.
    let own = if a.listen.is_empty() {
        vec![
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ]
    } else {
        a.listen
            .iter()
            .map(|l| l.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect()
    };
    pc.egress = EgressPolicy::new(a.allow.clone(), a.deny.clone(), own);
    let handler = ConnectUdp::new(pc);
    let mut config = ServerConfig::default();
    config.quic.datagrams = !a.no_datagrams;
    config.quic.workers = crate::endpoint_workers(a.workers);
    config.h3.extended_connect = true;
    let generated = a.cert.is_none();
    config.tls = crate::server_tls(&a.cert, &a.key)?;
    let admin_config = a.admin.config(&mut config.quic)?;
    let servers = crate::bind_servers(&a.listen, &config, handler.clone()).await?;
    let addrs = servers
        .iter()
        .map(|s| s.local_addr().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    println!("troupe proxy serving CONNECT-UDP on {addrs} (UDP)");
    let port = servers[0].local_addr().port();
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "troupe".into());
    let ca = if generated {
        let dir = std::env::temp_dir().join(format!("troupe-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("cert.pem");
        std::fs::write(&path, servers[0].identity().certificate_pem())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("self-signed certificate for localhost: {}", path.display());
        format!(" --ca {}", path.display())
    } else {
        String::new()
    };
    println!("try:  {me} udp-tunnel --proxy https://localhost:{port}/ --target HOST:PORT{ca}");
    let _admin = crate::start_admin(admin_config, &servers).await?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    signals.next().await;
    eprintln!(
        "troupe: shutting down: GOAWAY sent, flows end (up to {} s); signal again to exit now",
        a.drain_timeout
    );
    tokio::select! {
        _ = futures::future::join_all(
            servers.iter().map(|s| s.shutdown_gracefully(Duration::from_secs(a.drain_timeout))),
        ) => Ok(()),
        _ = signals.next() => {
            eprintln!("troupe: second signal: exiting now");
            std::process::exit(130);
        }
    }
}

#[derive(Args)]
pub(crate) struct TunnelArgs {
    /// The proxy, as an https:// URL (its path is not used; see --template).
    #[arg(long, value_name = "URL")]
    proxy: String,
    /// Where the datagrams go: HOST:PORT (an IPv6 address in brackets).
    #[arg(long, value_name = "HOST:PORT")]
    target: String,
    /// The local UDP address to forward from; programs send here.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    local: SocketAddr,
    /// The proxy's token, if it needs one.
    #[arg(long, env = "TROUPE_PROXY_TOKEN", value_name = "TOKEN")]
    token: Option<String>,
    /// The proxy's URI template.
    #[arg(long, default_value = DEFAULT_TEMPLATE, value_name = "URI")]
    template: String,
    /// Trust the proxy certificate(s) in this PEM file.
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Do not verify the proxy's certificate.
    #[arg(long, short = 'k')]
    insecure: bool,
}

pub(crate) async fn udp_tunnel(a: TunnelArgs) -> Result<()> {
    let mut signals = Signals::new()?;
    let uri: http::Uri = a
        .proxy
        .parse()
        .with_context(|| format!("--proxy {:?} is not a URL", a.proxy))?;
    if uri.scheme_str() != Some("https") {
        bail!("--proxy {:?} must start with https://", a.proxy);
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--proxy {:?} has no host", a.proxy))?
        .to_string();
    let authority = if uri.port_u16().is_none() {
        format!("{authority}:443")
    } else {
        authority
    };
    let target = parse_target(&a.target).map_err(|e| anyhow!("--target {e}"))?;
    let template = UdpTemplate::parse(&a.template).map_err(|e| anyhow!("--template: {e}"))?;
    let verify = crate::verify_from(&a.ca, a.insecure)?;
    let local = tokio::net::UdpSocket::bind(a.local)
        .await
        .with_context(|| format!("--local {}: cannot bind", a.local))?;
    let mut quic = QuicSettings::default();
    quic.datagrams = true;
    let tls = TlsConfig {
        identity: None,
        verify,
    };
    let ep = crate::client_endpoint(quic, tls).await?;
    let client = ep.connect_to(&authority).await?;
    let mut tunnel = UdpTunnel::open(
        &client,
        &authority,
        &template,
        &target.host,
        target.port,
        a.token.as_deref(),
    )
    .await?;
    println!(
        "forwarding UDP {} -> {}:{} through {}",
        local.local_addr()?,
        target.host,
        target.port,
        a.proxy
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut buf = vec![0u8; 65_535];
    let mut peer: Option<SocketAddr> = None;
    loop {
        tokio::select! {
            r = local.recv_from(&mut buf) => {
                let (n, from) = r.context("reading the local socket")?;
                peer = Some(from);
                tunnel.send(&buf[..n])?;
            }
            d = tunnel.recv() => {
                let Some(d) = d else {
                    // Close the connection before leaving, so the proxy need not wait for it
                    // to time out.
                    client.close();
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.closed()).await;
                    bail!("the proxy closed the tunnel");
                };
                if let Some(p) = peer {
                    let _ = local.send_to(&d, p).await;
                }
            }
            _ = signals.next() => {
                tunnel.close();
                client.close();
                let _ = tokio::time::timeout(Duration::from_secs(1), client.closed()).await;
                return Ok(());
            }
        }
    }
}
