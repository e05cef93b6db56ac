//! Catch-up: a replica receiving sealed segments whole (temporary home of the interface).

pub(crate) use crate::extents::{release_tail, zero_filled};
