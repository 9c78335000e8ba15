//! How a worker or the CLI reaches the coordinator (docs/architecture.md#authentication,
//! docs/architecture.md#tls): the URL (`http://` or `https://`), the bearer token sent on every call, and the TLS
//! settings of an `https://` URL. One place, so that workers and every CLI command connect
//! the same way.

mod tls;
mod token;

use std::time::Duration;

use mirrorplay_proto::v1::coordinator_client::CoordinatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use tls::{read_pem, ClientTls};
pub use token::{Bearer, Token, TokenError, TOKEN_ENV};

/// A coordinator client that sends the bearer token (if any) on every call.
pub type CoordinatorRpc = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// How often a connection with requests in flight pings the coordinator, and how long a ping
/// may go unanswered before the connection counts as dead. Without it a coordinator that stops
/// answering without closing the connection (a frozen process, a node gone from the network)
/// would leave every request on it waiting for the operating system's TCP keep-alive (two
/// hours by default); with it they fail within 40 s, and the channel connects afresh.
pub const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Where the coordinator is and how to talk to it.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// e.g. `http://127.0.0.1:50051` or `https://coordinator.example:50051`.
    pub url: String,
    pub token: Option<Token>,
    pub tls: ClientTls,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid coordinator URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{0}")]
    Tls(String),
}

impl Connection {
    /// The endpoint of the URL with its TLS settings (an `https://` URL always uses TLS; TLS
    /// options with an `http://` URL are an error rather than silently unused).
    pub fn endpoint(&self) -> Result<Endpoint, ConnectError> {
        let bad = |reason: String| ConnectError::BadUrl {
            url: self.url.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .tcp_nodelay(true);
        match self.url.split_once("://").map(|(scheme, _)| scheme) {
            Some("https") => endpoint
                .tls_config(self.tls.config()?)
                .map_err(|e| ConnectError::Tls(format!("TLS settings: {e}"))),
            Some("http") if self.tls.is_set() => Err(ConnectError::Tls(format!(
                "--tls-ca, --tls-cert and --tls-key need an https:// coordinator URL, not `{}`",
                self.url
            ))),
            Some("http") => Ok(endpoint),
            _ => Err(bad("expected http://HOST:PORT or https://HOST:PORT".into())),
        }
    }

    /// A client over `channel` that sends this connection's token.
    pub fn client(&self, channel: Channel) -> CoordinatorRpc {
        CoordinatorClient::with_interceptor(channel, Bearer::new(self.token.as_ref()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}
