//! Replication in the server: the upstream service, the follower, ack tracking, progress.

pub mod acks;
pub mod delay;
pub mod delay_state;
pub mod fetch_frames;
pub mod follower;
pub mod follower_logs;
pub mod follower_session;
pub mod plan;
pub mod progress;
pub mod retention;
pub mod segment_fetch;
pub mod sending;
pub mod upstream;
