//! `setgate route --diff OLD NEW`: what a new routing table moves, printed before anything
//! changes. The comparison is the router's ([`setgate_router::moves`]); this module loads both
//! files the way `setgate check` does and prints the answer.

use crate::load;
use setgate_router::{Moves, Router};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// Loads `old` and `new`, compares their routing tables and prints what moves (text or one JSON
/// document). `keys_file` holds one key per line; `extra` are keys given on the command line.
pub fn run(
    old: &Path,
    new: &Path,
    keys_file: Option<&Path>,
    extra: &[String],
    json: bool,
) -> ExitCode {
    let (a, b) = (load_router(old), load_router(new));
    let (Some(a), Some(b)) = (a, b) else {
        return ExitCode::FAILURE;
    };
    let mut keys: Vec<String> = Vec::new();
    if let Some(file) = keys_file {
        match std::fs::read_to_string(file) {
            Ok(text) => keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
            ),
            Err(e) => {
                eprintln!("{}: cannot read the keys file: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    keys.extend(extra.iter().cloned());
    let m = setgate_router::moves(&a, &b, keys.iter().map(String::as_str));
    if json {
        let doc = serde_json::json!({
            "old": { "config": old.display().to_string(), "fingerprint": a.fingerprint() },
            "new": { "config": new.display().to_string(), "fingerprint": b.fingerprint() },
            "moves": m,
        });
        crate::out(&format!("{doc}\n"));
    } else {
        crate::out(&text(&a, &b, &m));
    }
    ExitCode::SUCCESS
}

/// The routing table of the file at `path`, loaded as `setgate check` loads it; errors printed.
fn load_router(path: &Path) -> Option<Router> {
    match load::load(path, None) {
        Ok(loaded) => match loaded.proxy.router {
            Some(r) => Some((*r).clone()),
            None => {
                eprintln!(
                    "{}: has no [routing] section; nothing to compare",
                    path.display()
                );
                None
            }
        },
        Err(errs) => {
            crate::report_errors(path, &errs);
            None
        }
    }
}

fn set(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("(default pool)")
}

fn percent(share: f64) -> String {
    format!("{:.3}%", share * 100.0)
}

/// The human form: a summary line, then one section per kind of move.
fn text(a: &Router, b: &Router, m: &Moves) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# fingerprint {} -> {}",
        a.fingerprint(),
        b.fingerprint()
    );
    if let Some((from, to)) = &m.key_source {
        let _ = writeln!(t, "key: {from} -> {to}: the key is another value of the handshake; any connection may move");
    }
    let how = match m.sampled {
        None => format!("exact, {} on both sides", a.strategy()),
        Some(n) => format!(
            "estimated from {n} sample keys: {} -> {}",
            a.strategy(),
            b.strategy()
        ),
    };
    let _ = writeln!(t, "key space: {} changes SET ({how})", percent(m.share));
    for f in &m.flows {
        let _ = writeln!(
            t,
            "  {:<16} -> {:<16} {}",
            set(&f.from),
            set(&f.to),
            percent(f.share)
        );
    }
    for s in &m.sets_added {
        let _ = writeln!(t, "SET {s}: added");
    }
    for s in &m.sets_removed {
        let _ = writeln!(t, "SET {s}: removed");
    }
    for p in &m.pools {
        let _ = writeln!(
            t,
            "SET {}: pool {} -> {} (its keys stay; reroute does not close them)",
            p.set, p.from, p.to
        );
    }
    if let Some(n) = m.bucket_count {
        let moved: u32 = m.buckets.iter().map(|r| r.last - r.first + 1).sum();
        let _ = writeln!(t, "buckets: {moved} of {n} change owner");
        for r in &m.buckets {
            let which = if r.first == r.last {
                format!("bucket {}", r.first)
            } else {
                format!("buckets {}-{}", r.first, r.last)
            };
            let _ = writeln!(t, "  {which:<16} {} -> {}", r.from, r.to);
        }
    }
    if !m.overrides.is_empty() {
        let _ = writeln!(t, "overrides: {} changed", m.overrides.len());
    }
    for o in &m.overrides {
        let edit = match (&o.before, &o.after) {
            (None, Some(to)) => format!("added = {to}"),
            (Some(from), None) => format!("removed (was {from})"),
            (Some(from), Some(to)) => format!("{from} -> {to}"),
            (None, None) => unreachable!("an override change has a side"),
        };
        let effect = if o.from == o.to {
            format!("stays on {}", set(&o.to))
        } else {
            format!("moves {} -> {}", set(&o.from), set(&o.to))
        };
        let _ = writeln!(t, "  {:<24} {edit}; {effect}", o.key);
    }
    if m.keys_checked > 0 {
        let _ = writeln!(
            t,
            "listed keys: {} of {} move",
            m.keys.len(),
            m.keys_checked
        );
        for k in &m.keys {
            let _ = writeln!(
                t,
                "  {:<24} {} ({}) -> {} ({})",
                k.key,
                set(&k.from),
                k.from_reason,
                set(&k.to),
                k.to_reason
            );
        }
    }
    if m.is_empty() {
        let _ = writeln!(t, "nothing moves");
    }
    t
}
