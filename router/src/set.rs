//! One SET as the router sees it: a leaf that the router and the fingerprint both read.

/// One SET as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub(crate) name: String,
    pub(crate) pool: String,
    pub(crate) weight: u32,
    pub(crate) failover: Option<String>,
    /// Index of the failover SET in the router's list, resolved at build time.
    pub(crate) failover_index: Option<usize>,
}

impl Set {
    /// The SET's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool that serves this SET.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The SET's weight on the ring (0 = out of the ring; unused by the buckets strategy).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The SET that takes over when this SET's pool is down, if any.
    pub fn failover(&self) -> Option<&str> {
        self.failover.as_deref()
    }
}
