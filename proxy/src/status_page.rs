//! The status page served at `/`: one self-contained HTML file (no external assets) that renders
//! the JSON API.

/// The page.
pub const HTML: &str = include_str!("status_page.html");
