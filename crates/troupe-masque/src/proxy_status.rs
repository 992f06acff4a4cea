//! The `Proxy-Status` response header (RFC 9209): why a proxy refused or failed a request, as a
//! structured field (`troupe; error=destination_ip_prohibited; details="..."`), serialized by
//! `sfv`. A pure module, unit-tested without sockets.

use sfv::{KeyRef, StringRef, TokenRef};

/// The name this proxy gives itself in `Proxy-Status`.
pub const PROXY_NAME: &str = "troupe";

/// Proxy-Status error types (RFC 9209 §2.3) a CONNECT-UDP proxy gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The target's name did not resolve (`dns_error`).
    DnsError,
    /// Resolving took too long (`dns_timeout`).
    DnsTimeout,
    /// The target's address is refused by policy (`destination_ip_prohibited`).
    DestinationIpProhibited,
    /// No route to the target's address (`destination_ip_unroutable`).
    DestinationIpUnroutable,
    /// The target refused (ICMP port unreachable) (`connection_refused`).
    ConnectionRefused,
    /// A per-connection or per-proxy limit was reached (`connection_limit_reached`).
    ConnectionLimitReached,
    /// The request was malformed (`http_request_error`).
    HttpRequestError,
    /// The request was denied (authentication) (`http_request_denied`).
    HttpRequestDenied,
    /// Something failed inside the proxy (`proxy_internal_error`).
    ProxyInternalError,
}

impl ProxyError {
    /// The error type's token.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::DnsError => "dns_error",
            ProxyError::DnsTimeout => "dns_timeout",
            ProxyError::DestinationIpProhibited => "destination_ip_prohibited",
            ProxyError::DestinationIpUnroutable => "destination_ip_unroutable",
            ProxyError::ConnectionRefused => "connection_refused",
            ProxyError::ConnectionLimitReached => "connection_limit_reached",
            ProxyError::HttpRequestError => "http_request_error",
            ProxyError::HttpRequestDenied => "http_request_denied",
            ProxyError::ProxyInternalError => "proxy_internal_error",
        }
    }
}

/// The header's value: this proxy's name, the error type, and `details` (characters a
/// structured-field string cannot hold are replaced by `?`).
pub fn header_value(error: ProxyError, details: Option<&str>) -> String {
    let name = TokenRef::from_str(PROXY_NAME).expect("a token");
    let key = KeyRef::from_str("error").expect("a key");
    let error_token = TokenRef::from_str(error.as_str()).expect("a token");
    let ser = sfv::ItemSerializer::new()
        .bare_item(name)
        .parameter(key, error_token);
    let ser = match details {
        Some(d) => {
            let clean: String = d
                .chars()
                .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
                .collect();
            let s = StringRef::from_str(&clean).expect("printable ASCII is a string");
            ser.parameter(KeyRef::from_str("details").expect("a key"), s)
        }
        None => ser,
    };
    ser.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_details_it_is_the_name_and_the_error() {
        assert_eq!(
            header_value(ProxyError::DnsTimeout, None),
            "troupe;error=dns_timeout"
        );
    }

    #[test]
    fn details_are_a_quoted_string_with_escapes() {
        let v = header_value(
            ProxyError::DestinationIpProhibited,
            Some(r#"127.0.0.1 is "loopback" \ local"#),
        );
        assert_eq!(
            v,
            r#"troupe;error=destination_ip_prohibited;details="127.0.0.1 is \"loopback\" \\ local""#
        );
        // Parses back as one item with both parameters.
        let parsed = sfv::Parser::new(v.as_str()).parse::<sfv::Item>().unwrap();
        assert_eq!(parsed.params.len(), 2);
    }

    #[test]
    fn unprintable_details_are_replaced_not_refused() {
        let v = header_value(ProxyError::DnsError, Some("é\nx"));
        assert_eq!(v, r#"troupe;error=dns_error;details="??x""#);
    }
}
