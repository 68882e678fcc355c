//! Start-up errors: each says what is missing and what to do about it.

use std::io;

/// Why VRRP could not start.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct VrrpError(#[from] pub StartError);

/// The kinds of start-up failure, for callers that want to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The `[vrrp]` section is invalid.
    #[error("invalid [vrrp] section: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The process lacks CAP_NET_RAW and/or CAP_NET_ADMIN.
    #[error(
        "vrrp needs CAP_NET_RAW (raw VRRP and ARP sockets) and CAP_NET_ADMIN (adding the virtual IPs); \
         missing: {missing}. Run setgate as root, or grant them with \
         `setcap cap_net_raw,cap_net_admin+ep /path/to/setgate`, or in its systemd unit with \
         `AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN`"
    )]
    Capability {
        /// The missing capabilities, e.g. `CAP_NET_ADMIN`.
        missing: String,
    },
    /// `vrrp.interface` names no interface in this network namespace.
    #[error(
        "vrrp.interface: there is no interface {0:?} here; `ip link` lists the names this host has"
    )]
    NoInterface(String),
    /// The interface has no IPv4 address to send adverts from.
    #[error(
        "vrrp.interface: {0} has no IPv4 address of its own to send adverts from; \
         add one, or set vrrp.unicast_src"
    )]
    NoAddress(String),
    /// A system call failed.
    #[error("vrrp: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

impl StartError {
    /// An I/O failure while doing `what`; a permission error becomes [`StartError::Capability`].
    pub fn io(what: impl Into<String>, source: io::Error, needs: &str) -> StartError {
        if source.kind() == io::ErrorKind::PermissionDenied {
            return StartError::Capability {
                missing: needs.into(),
            };
        }
        StartError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The effective capabilities VRRP needs that this process does not have, from
/// `/proc/self/status` (no libcap needed). Empty when all are there or when the file cannot be
/// read (the socket calls then fail with a permission error, reported the same way).
pub fn missing_capabilities() -> Vec<&'static str> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_NET_RAW: u32 = 13;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return Vec::new();
    };
    [
        (CAP_NET_RAW, "CAP_NET_RAW"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let e = VrrpError::from(StartError::Capability {
            missing: "CAP_NET_ADMIN".into(),
        });
        assert!(
            e.to_string()
                .contains("missing: CAP_NET_ADMIN. Run setgate as root"),
            "{e}"
        );
        let e = StartError::io(
            "open",
            io::Error::from(io::ErrorKind::PermissionDenied),
            "CAP_NET_RAW",
        );
        assert!(matches!(e, StartError::Capability { ref missing } if missing == "CAP_NET_RAW"));
        let e = VrrpError::from(StartError::NoInterface("eth9".into()));
        assert!(e
            .to_string()
            .starts_with("vrrp.interface: there is no interface \"eth9\""));
    }
}
