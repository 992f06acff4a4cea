//! TLS material: the server's certificate and key (from PEM files, or a self-signed one made at
//! start), and how a client verifies the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use boring::pkey::{PKey, Private};
use boring::ssl::{SslContextBuilder, SslMethod, SslVerifyMode};
use boring::x509::X509;

use crate::error::ConfigError;

/// Names the generated self-signed certificate is valid for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate chain and its private key.
#[derive(Clone)]
pub struct Identity {
    chain: Arc<Vec<X509>>,
    key: PKey<Private>,
    chain_pem: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .field("spki_sha256", &self.spki_sha256_base64())
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::File {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl Identity {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, ConfigError> {
        let cert_pem = read_file(cert, "certificate")?;
        let key_pem = read_file(key, "private key")?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            ConfigError::Tls(why) => ConfigError::Tls(format!(
                "{why} (certificate {}, key {})",
                cert.display(),
                key.display()
            )),
            other => other,
        })
    }

    /// Parses a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, ConfigError> {
        let chain = X509::stack_from_pem(cert_pem)
            .map_err(|e| ConfigError::Tls(format!("certificate is not valid PEM: {e}")))?;
        if chain.is_empty() {
            return Err(ConfigError::Tls(
                "the certificate file holds no PEM certificate".into(),
            ));
        }
        let key = PKey::private_key_from_pem(key_pem)
            .map_err(|e| ConfigError::Tls(format!("private key is not valid PEM: {e}")))?;
        let leaf_key = chain[0]
            .public_key()
            .map_err(|e| ConfigError::Tls(format!("certificate has no usable public key: {e}")))?;
        if !leaf_key.public_eq(&key) {
            return Err(ConfigError::Tls(
                "the private key does not belong to the certificate".into(),
            ));
        }
        Ok(Identity {
            chain: Arc::new(chain),
            key,
            chain_pem: Arc::new(cert_pem.to_vec()),
        })
    }

    /// Generates a self-signed certificate for [`SELF_SIGNED_NAMES`].
    pub fn self_signed() -> Result<Self, ConfigError> {
        let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| ConfigError::Tls(format!("cannot generate a certificate: {e}")))?;
        Self::from_pem(
            ck.cert.pem().as_bytes(),
            ck.signing_key.serialize_pem().as_bytes(),
        )
    }

    /// The certificate chain in PEM, as a client would be told to trust it.
    pub fn certificate_pem(&self) -> &[u8] {
        &self.chain_pem
    }

    /// SHA-256 of the leaf certificate's SubjectPublicKeyInfo, base64: the form Chromium's
    /// `--ignore-certificate-errors-spki-list` takes.
    pub fn spki_sha256_base64(&self) -> String {
        let der = self.chain[0]
            .public_key()
            .and_then(|k| k.public_key_to_der())
            .unwrap_or_default();
        boring::base64::encode_block(&boring::sha::sha256(&der))
    }
}

/// How a client decides whether to trust a server's certificate.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Verify {
    /// The system's trust store (the default).
    #[default]
    SystemRoots,
    /// Only certificates issued by (or equal to) those in this PEM file.
    CaFile(PathBuf),
    /// Only certificates issued by (or equal to) these PEM certificates.
    CaPem(Vec<u8>),
    /// No verification at all. For tests against self-signed servers only.
    Insecure,
}

/// TLS configuration of an endpoint: the identity a server presents, how a client verifies.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// Certificate and key presented by a server. A server without one generates a
    /// self-signed identity at bind time.
    pub identity: Option<Identity>,
    /// Client-side verification of the server.
    pub verify: Verify,
}

/// A server named by IP address: its certificate must carry that address among its IP address
/// entries (RFC 9525 §6.3; never the common name), and no SNI is sent (RFC 6066 §3 forbids IP
/// literals there). `mismatch` records a refusal for that reason, for a clear error.
#[derive(Debug, Clone)]
pub(crate) struct IpIdentity {
    pub(crate) ip: std::net::IpAddr,
    pub(crate) mismatch: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Whether `san` (an IP address entry: 4 or 16 bytes) is `ip`; an IPv4 address also matches its
/// IPv4-mapped IPv6 form.
fn ip_entry_matches(san: &[u8], ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match (ip, san.len()) {
        (IpAddr::V4(v4), 4) => san == v4.octets(),
        (IpAddr::V6(v6), 16) => san == v6.octets(),
        (IpAddr::V4(v4), 16) => san == v4.to_ipv6_mapped().octets(),
        _ => false,
    }
}

impl TlsConfig {
    /// The client context for a server named by IP address: chain verification as configured,
    /// plus the leaf certificate's IP address entries checked against `id.ip`.
    pub(crate) fn client_context_for_ip(
        &self,
        id: &IpIdentity,
    ) -> Result<SslContextBuilder, ConfigError> {
        let mut b = self.context_builder(false)?;
        if self.verifies_peer() {
            let (ip, mismatch) = (id.ip, id.mismatch.clone());
            b.set_verify_callback(SslVerifyMode::PEER, move |chain_ok, ctx| {
                if !chain_ok || ctx.error_depth() != 0 {
                    return chain_ok;
                }
                let named = ctx.current_cert().is_some_and(|leaf| {
                    leaf.subject_alt_names().is_some_and(|names| {
                        names
                            .iter()
                            .any(|n| n.ipaddress().is_some_and(|san| ip_entry_matches(san, ip)))
                    })
                });
                if !named {
                    mismatch.store(true, std::sync::atomic::Ordering::Release);
                }
                named
            });
        }
        Ok(b)
    }

    pub(crate) fn verifies_peer(&self) -> bool {
        !matches!(self.verify, Verify::Insecure)
    }

    pub(crate) fn context_builder(
        &self,
        is_server: bool,
    ) -> Result<SslContextBuilder, ConfigError> {
        let tls = |e: boring::error::ErrorStack| ConfigError::Tls(e.to_string());
        let mut b = SslContextBuilder::new(SslMethod::tls()).map_err(tls)?;
        if is_server {
            let id = self
                .identity
                .as_ref()
                .ok_or_else(|| ConfigError::Tls("a server needs a certificate and key".into()))?;
            b.set_certificate(&id.chain[0]).map_err(tls)?;
            for extra in id.chain.iter().skip(1) {
                b.add_extra_chain_cert(extra.clone()).map_err(tls)?;
            }
            b.set_private_key(&id.key).map_err(tls)?;
            b.check_private_key().map_err(tls)?;
        } else {
            match &self.verify {
                Verify::SystemRoots => b.set_default_verify_paths().map_err(tls)?,
                Verify::CaFile(path) => {
                    let pem = read_file(path, "CA certificate")?;
                    add_cas(&mut b, &pem).map_err(|why| {
                        ConfigError::Tls(format!("{why} (CA file {})", path.display()))
                    })?;
                }
                Verify::CaPem(pem) => add_cas(&mut b, pem).map_err(ConfigError::Tls)?,
                Verify::Insecure => b.set_verify(SslVerifyMode::NONE),
            }
        }
        Ok(b)
    }
}

fn add_cas(b: &mut SslContextBuilder, pem: &[u8]) -> Result<(), String> {
    let certs =
        X509::stack_from_pem(pem).map_err(|e| format!("CA certificate is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the CA file holds no PEM certificate".into());
    }
    for c in certs {
        b.cert_store_mut()
            .add_cert(c)
            .map_err(|e| format!("cannot add CA certificate: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_entries_match_exactly() {
        let v4: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let v6: std::net::IpAddr = "::1".parse().unwrap();
        assert!(ip_entry_matches(&[127, 0, 0, 1], v4));
        assert!(!ip_entry_matches(&[127, 0, 0, 2], v4));
        assert!(ip_entry_matches(&v6_bytes("::1"), v6));
        assert!(!ip_entry_matches(&[127, 0, 0, 1], v6));
        assert!(ip_entry_matches(&v6_bytes("::ffff:127.0.0.1"), v4));
        assert!(!ip_entry_matches(&[], v4));
    }

    fn v6_bytes(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn self_signed_round_trips_through_pem() {
        let id = Identity::self_signed().unwrap();
        let pem = std::str::from_utf8(id.certificate_pem()).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        // 32 bytes of SHA-256 in base64 is 44 characters.
        assert_eq!(id.spki_sha256_base64().len(), 44);
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["a".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".to_string()]).unwrap();
        let err = Identity::from_pem(
            a.cert.pem().as_bytes(),
            b.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err =
            Identity::from_pem_files(Path::new("/nonexistent/c.pem"), Path::new("/x")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}
