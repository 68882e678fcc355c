//! The config contract: every example in `configs/` (and what docker-compose.yml mounts) passes
//! `setgate check`, broken files fail with a message naming the field, secrets never show, and
//! the Grafana dashboard only uses metrics setgate exports.

mod common;

use common::BIN;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `setgate check --config path`.
fn check(path: impl AsRef<Path>) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(path.as_ref())
        .output()
        .expect("run setgate check")
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_config_passes_check_and_broken_ones_fail_with_their_own_message() {
    let mut files = Vec::new();
    toml_files(&root().join("configs"), &mut files);
    let mut checked = 0;
    for path in files {
        {
            let out = check(&path);
            assert!(
                out.status.success(),
                "{} fails check:\n{}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected example configs in configs/");

    let base_pool =
        "[[pool]]\nname = \"p\"\nservers = [{ name = \"a\", addr = \"127.0.0.1:5672\" }]\n";
    let base_listener = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:5673\"\npool = \"p\"\n";
    let cases: Vec<(String, &str)> = vec![
        (base_listener.to_string(), "pool \"p\" is not defined"),
        (format!("{base_listener}{base_pool}{base_pool}"), "pool \"p\" is defined twice"),
        (format!("{base_listener}{base_pool}").replace("127.0.0.1:5672", "10.0.0.1"), "is not HOST:PORT"),
        (format!("{base_listener}{base_pool}").replace("127.0.0.1:5673", "nowhere:5673"), "bind takes an IP address"),
        (format!("{base_listener}{base_pool}check = {{ rise = 0 }}\n"), "check.rise: 0"),
        (format!("{base_listener}{base_pool}check = {{ fall = 0 }}\n"), "check.fall: 0"),
        (format!("{base_listener}{base_pool}check = {{ inter = \"0s\" }}\n"), "check.inter: 0s"),
        (format!("{base_listener}{base_pool}check = {{ inter = \"soon\" }}\n"), "inter"),
        (format!("{base_listener}tls = {{ cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }}\n{base_pool}"), "/nonexistent/cert.pem"),
        (format!("{base_listener}maxconn = 0\n{base_pool}"), "maxconn: 0"),
        (format!("{base_listener}balance = \"first\"\n{base_pool}"), "unknown field `balance`"),
        (format!("{base_listener}mode = \"udp\"\n{base_pool}"), "unknown variant `udp`"),
        (format!("{base_listener}{base_pool}balance = \"random\"\n"), "unknown variant `random`"),
        (format!("{base_listener}{base_pool}").replace("pool = \"p\"\n", "mode = \"set\"\n"), "needs a [routing] section"),
        (format!("[admin]\nlisten = \"localhost\"\n{base_listener}{base_pool}"), "admin.listen"),
        (format!("[admin]\nlisten = \"127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"\n{base_listener}{base_pool}"), "token_file"),
        (format!("{base_listener}rate_limit = 0\n{base_pool}"), "listener[0] (l).rate_limit: 0 would accept no connection"),
        (format!("{base_listener}backlog = 100000\n{base_pool}"), "listener[0] (l).backlog: 100000 is out of range"),
        (format!("{base_listener}limits = {{ user_maxconn = 5 }}\n{base_pool}"), "listener[0] (l).limits: per-user, per-vhost and per-source limits need mode = \"set\""),
        (format!("{base_listener}limits = {{ user_maxconn = 0 }}\n{base_pool}"), "listener[0] (l).limits.user_maxconn: 0 would refuse every connection"),
        (format!("{base_listener}limits = {{ source_rate = 0 }}\n{base_pool}"), "listener[0] (l).limits.source_rate: 0"),
        (format!("{base_listener}limits = {{ overrides = {{ \"batch-svc\" = {{}} }} }}\n{base_pool}"), "listener[0] (l).limits.overrides.\"batch-svc\": sets nothing"),
        (format!("{base_listener}limits = {{ user_maxcon = 5 }}\n{base_pool}"), "unknown field `user_maxcon`"),
        (format!("{base_listener}limits = {{ user_maxconn = -1 }}\n{base_pool}"), "user_maxconn"),
        ("".to_string(), "configures nothing to run"),
        ("[vrrp]\ninterface = \"eth0\"\n[[vrrp.instance]]\nvrid = 51\nvip = [\"192.0.2.100\"]\n[[vrrp.instance]]\nvrid = 51\nvip = [\"192.0.2.101\"]\n".to_string(), "vrrp.instance[1].vrid: 51 on eth0 is also vrrp.instance[0]'s"),
        ("[vrrp]\ninterface = \"eth0\"\nvrid = 51\nvip = [\"192.0.2.100\"]\ntrack_fault_after = \"1ms\"\n".to_string(), "vrrp.track_fault_after: 1ms is out of range"),
        ("[vrrp]\ninterface = \"eth0\"\n[[vrrp.instance]]\nvip = [\"192.0.2.100\"]\n".to_string(), "vrrp.instance[0].vrid: missing"),
        (format!("{base_listener}{base_pool}[routing]\ndefault = \"p\"\nreroute = {{ window = \"0s\" }}\n"), "routing.reroute.window: is 0s"),
        (format!("{base_listener}{base_pool}[routing]\ndefault = \"p\"\nreroute = {{ window = \"3h\" }}\n"), "routing.reroute.window: is 3h, more than 1h"),
    ];
    let dir = setgate_testkit::unique_dir("broken-configs");
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.join(format!("broken-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "case {i} should fail:\n{text}\n{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "case {i}: expected {expected:?} in:\n{stderr}"
        );
    }
    // Several problems are reported at once.
    let path = dir.join("many.toml");
    std::fs::write(
        &path,
        format!("{base_listener}maxconn = 0\n{base_pool}check = {{ rise = 0, fall = 0 }}\n"),
    )
    .unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 errors"), "{stderr}");
}

#[test]
fn check_never_prints_a_secret() {
    let dir = setgate_testkit::unique_dir("secret-config");
    let path = dir.join("s.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:5673\"\npool = \"p\"\n[[pool]]\nname = \"p\"\n\
         check = { kind = \"http\", auth = \"monitor:hunter2\", rise = 0 }\nservers = [{ name = \"a\", addr = \"127.0.0.1:5672\", check_port = 15672 }]\n",
    )
    .unwrap();
    let out = check(&path);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("check.rise: 0"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn docker_compose_is_valid_and_mounts_only_checked_configs() {
    let compose = root().join("docker-compose.yml");
    let text = std::fs::read_to_string(&compose).unwrap();
    // Every setgate config the compose file mounts exists and passes check.
    let mounted: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./"))
        .filter_map(|m| m.split(':').next())
        .filter(|p| p.ends_with(".toml"))
        .collect();
    assert!(
        mounted.len() >= 2,
        "expected the dc1 and dc2 setgate configs in {text}"
    );
    for m in mounted {
        let out = check(root().join(m));
        assert!(
            out.status.success(),
            "{m}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The compose file itself, with the client the machine has (no engine is needed for this).
    let clients: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    let client = clients.iter().find(|c| {
        std::process::Command::new(c[0])
            .args(&c[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(client) = client else {
        panic!("no docker compose client: scripts/setup installs docker-compose");
    };
    let out = std::process::Command::new(client[0])
        .args(&client[1..])
        .arg("-f")
        .arg(&compose)
        .args(["config", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_setgate_exports() {
    let dash = std::fs::read_to_string(root().join("contrib/grafana-dashboard.json")).unwrap();
    let mut sources = String::new();
    for dir in ["proxy/src", "federation/src", "vrrp/src", "src"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    sources += &std::fs::read_to_string(p).unwrap();
                }
            }
        }
    }
    let mut names: Vec<&str> = dash
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("setgate_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            sources.contains(&format!("\"{base}\"")),
            "the dashboard uses {name}, which no code records"
        );
    }
}
