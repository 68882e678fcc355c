//! The checks of a listener's `rate_limit`, `backlog` and `limits` (see [`crate::limits`]).

use crate::config::{ListenerConfig, ListenerMode};

/// Pushes a `field: what is wrong; what to do` line for each problem; `f` names the listener.
pub(crate) fn validate(f: &str, l: &ListenerConfig, errs: &mut Vec<String>) {
    if l.rate_limit == Some(0) {
        errs.push(format!(
            "{f}.rate_limit: 0 would accept no connection; remove it for no limit, or set >= 1 (new connections a second)"
        ));
    }
    if l.backlog == 0 || l.backlog > 65_535 {
        errs.push(format!(
            "{f}.backlog: {} is out of range; use 1..=65535 (the kernel also caps it at net.core.somaxconn)",
            l.backlog
        ));
    }
    let Some(limits) = &l.limits else {
        return;
    };
    if l.mode != ListenerMode::Set {
        errs.push(format!(
            "{f}.limits: per-user, per-vhost and per-source limits need mode = \"set\" (setgate reads the AMQP handshake); a tcp listener has rate_limit and maxconn"
        ));
    }
    for (name, v) in [
        ("user_maxconn", limits.user_maxconn),
        ("user_rate", limits.user_rate),
        ("vhost_maxconn", limits.vhost_maxconn),
        ("vhost_rate", limits.vhost_rate),
        ("source_rate", limits.source_rate),
    ] {
        if v == Some(0) {
            errs.push(format!(
                "{f}.limits.{name}: 0 would refuse every connection; remove it for no limit, or set >= 1"
            ));
        }
    }
    for (user, o) in &limits.overrides {
        let of = format!("{f}.limits.overrides.{user:?}");
        if user.is_empty() {
            errs.push(format!(
                "{of}: an empty user name; name the SASL user the override is for"
            ));
        }
        if o.maxconn.is_none() && o.rate.is_none() {
            errs.push(format!("{of}: sets nothing; give maxconn and/or rate"));
        }
        for (name, v) in [("maxconn", o.maxconn), ("rate", o.rate)] {
            if v == Some(0) {
                errs.push(format!(
                    "{of}.{name}: 0 would refuse every connection of this user; set >= 1"
                ));
            }
        }
    }
}
