//! The one error type of the crate: a problem found in the `[routing]` section.

/// One problem in the `[routing]` section of the config.
///
/// [`Router::new`](crate::Router::new) returns every problem it finds at once, so an operator fixes a
/// file in one round instead of one error per `setgate check`. Each error names the field in TOML
/// terms (`routing.sets[1].failover`) and says what to do, because that is what a person reading
/// the output of `setgate check` needs; there is deliberately no finer-grained kind to match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigError {
    /// Where the problem is, as a TOML path: `routing.sets[1].failover`, `routing.bucket_map`.
    pub path: String,
    /// What is wrong and what to do about it.
    pub problem: String,
}

impl ConfigError {
    /// Builds an error for the field at `path`.
    pub(crate) fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_path_then_problem() {
        let e = ConfigError::new("routing.sets[1].failover", "SET \"set-z\" is not defined");
        assert_eq!(
            e.to_string(),
            "routing.sets[1].failover: SET \"set-z\" is not defined"
        );
    }
}
