//! TLS settings of an `https://` coordinator URL: the CA that signed the coordinator's
//! certificate (`--tls-ca`; else the system's roots), and this side's certificate and key
//! (`--tls-cert`, `--tls-key`) when the coordinator asks for client certificates (mTLS).

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::ConnectError;

#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM file of the CA certificate(s) to trust; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM files of this side's certificate (chain) and private key, for mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The bytes of a PEM file (`what` names it in errors).
pub fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, ConnectError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConnectError::Tls(format!("cannot read {what} {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ConnectError::Tls(format!(
            "{what} {} is not a PEM file",
            path.display()
        )));
    }
    Ok(bytes)
}

impl ClientTls {
    /// Whether any TLS option was given.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    pub(crate) fn config(&self) -> Result<ClientTlsConfig, ConnectError> {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => {
                config.ca_certificate(Certificate::from_pem(read_pem(ca, "CA certificate")?))
            }
            None => config.with_native_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let identity = Identity::from_pem(
                    read_pem(cert, "certificate")?,
                    read_pem(key, "private key")?,
                );
                config = config.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(ConnectError::Tls(
                    "--tls-cert and --tls-key go together".into(),
                ))
            }
        }
        Ok(config)
    }
}
