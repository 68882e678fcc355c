//! The AMQP 0-9-1 that setgate speaks itself: frames, the client handshake of `set` listeners and
//! the routing key in a StartOk.

pub mod frame;
pub mod handshake;
pub mod key;

pub use frame::PROTOCOL_HEADER;
