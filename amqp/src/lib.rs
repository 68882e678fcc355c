//! The AMQP 0-9-1 that setgate reads and writes itself, shared by the proxy (a `set` listener's
//! handshake, upstream greetings, `amqp` health checks) and federation (the broker's
//! `Connection.Start`, for its `cluster_name`). `amq-protocol` parses and builds the frames; this
//! crate only frames the bytes, under a size cap.
//!
//! Modules:
//! - [`field`]: the encoded length of a field-table value, for walking tables unparsed.
//! - [`frame`]: the protocol header, reading one frame with a size cap, [`FrameError`],
//!   Connection.Start checks and Connection.Close.
//! - [`names`]: a method's name from its class and method ids, for errors and logs.
//! - [`nesting`]: how deep a frame's field tables nest, checked before amq-protocol's parser
//!   recurses into them.

pub mod field;
pub mod frame;
pub mod names;
pub mod nesting;

pub use frame::{FrameError, HANDSHAKE_FRAME_MAX, PROTOCOL_HEADER};
