//! Server addresses: `IP:PORT`, `[IPv6]:PORT` or `HOSTNAME:PORT`.
//!
//! IP literals are parsed once; host names are resolved at connect time, so a broker that moves to
//! a new address is found without a reload.

use std::net::SocketAddr;

/// A parsed `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    host: String,
    port: u16,
    literal: Option<SocketAddr>,
}

/// Splits `HOST:PORT` / `[V6]:PORT`, or says what is wrong.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT (e.g. 10.0.1.11:5672)"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("{s:?} has no host (e.g. 10.0.1.11:5672)"));
    }
    if host.contains(':') && !s.starts_with('[') {
        return Err(format!("{s:?}: write IPv6 addresses as [ADDR]:PORT"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(format!("{s:?}: port 0 is not a server port"));
    }
    Ok((host, port))
}

impl ServerAddr {
    /// Parses `HOST:PORT`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = split_host_port(s)?;
        let literal = host.parse().ok().map(|ip| SocketAddr::new(ip, port));
        Ok(ServerAddr {
            host: host.to_string(),
            port,
            literal,
        })
    }

    /// The same host with another port (health checks on `check_port`).
    pub fn with_port(&self, port: u16) -> Self {
        ServerAddr {
            host: self.host.clone(),
            port,
            literal: self.literal.map(|a| SocketAddr::new(a.ip(), port)),
        }
    }

    /// The host part.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The addresses to try, in order.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self.literal {
            Some(a) => Ok(vec![a]),
            None => Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
                .await?
                .collect()),
        }
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(split_host_port("10.0.1.11:5672"), Ok(("10.0.1.11", 5672)));
        assert_eq!(split_host_port("[::1]:5672"), Ok(("::1", 5672)));
        assert_eq!(split_host_port("dc1-a:5672"), Ok(("dc1-a", 5672)));
        assert!(split_host_port("10.0.1.11")
            .unwrap_err()
            .contains("not HOST:PORT"));
        assert!(split_host_port("::1:5672").unwrap_err().contains("IPv6"));
        assert!(split_host_port("h:99999")
            .unwrap_err()
            .contains("1 to 65535"));
        assert!(split_host_port(":5672").unwrap_err().contains("no host"));
        assert!(split_host_port("h:0").unwrap_err().contains("port 0"));
        let a = ServerAddr::parse("[::1]:5672").unwrap();
        assert_eq!(a.to_string(), "[::1]:5672");
        assert_eq!(a.with_port(15672).to_string(), "[::1]:15672");
    }
}
