//! Replication protocol logic (sans-IO). Filled in by the replication issue.
