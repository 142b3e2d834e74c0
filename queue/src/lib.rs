//! The queue as both binaries see it: where each job kind's jobs live in
//! Redis (through apalis-redis), how a push is made and announced, how deep
//! the queues are, and the connection options both binaries take. The
//! worker's job loops, its janitor and its quarantine build on this; the
//! client needs nothing more to enqueue.

pub mod layout;
pub mod options;
mod redis_queue;

pub use redis_queue::RedisQueue;
