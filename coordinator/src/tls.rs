//! The coordinator's TLS settings (docs/architecture.md#tls): its certificate and key
//! (`--tls-cert`, `--tls-key`), and with `--tls-client-ca` the CA whose certificates clients
//! must present (mTLS: workers and the CLI then connect with `--tls-cert`/`--tls-key` too).

use std::path::PathBuf;

use mirrorplay_worker::connect::read_pem;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::exit::Exit;

#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// The rustls settings; an unreadable or non-PEM file is a usage error.
    pub fn config(&self) -> Result<ServerTlsConfig, Exit> {
        let pem = |path: &PathBuf, what: &str| {
            read_pem(path, what).map_err(|e| Exit::Config(e.to_string()))
        };
        let identity =
            Identity::from_pem(pem(&self.cert, "--tls-cert")?, pem(&self.key, "--tls-key")?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config
                .client_ca_root(Certificate::from_pem(pem(ca, "--tls-client-ca")?))
                .client_auth_optional(false);
        }
        Ok(config)
    }
}
