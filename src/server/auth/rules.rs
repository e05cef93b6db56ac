//! Which role each RPC needs, by its gRPC path. Unknown paths need `admin`: a new RPC is
//! closed until it is given a rule.

use super::Role;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Health checks: anyone.
    Nothing,
    Role(Role),
}

pub fn needs(path: &str) -> Needs {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let role = match (service, method) {
        ("grpc.health.v1.Health", _) => return Needs::Nothing,
        ("spool.v1.Log", "Append" | "AppendStream") => Role::Write,
        ("spool.v1.Log", "Read" | "Subscribe") => Role::Read,
        ("spool.v1.Logs", "Create") => Role::Write,
        ("spool.v1.Logs", "List" | "Describe") => Role::Read,
        ("spool.v1.Logs", "Delete") => Role::Admin,
        ("spool.v1.Status", _) => Role::Read,
        ("spool.replication.v1.Replication", _) => Role::Replica,
        (s, _) if s.starts_with("grpc.reflection.") => Role::Read,
        _ => Role::Admin,
    };
    Needs::Role(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_its_role_and_the_unknown_need_admin() {
        assert_eq!(needs("/spool.v1.Log/Append"), Needs::Role(Role::Write));
        assert_eq!(needs("/spool.v1.Log/Subscribe"), Needs::Role(Role::Read));
        assert_eq!(needs("/spool.v1.Logs/Delete"), Needs::Role(Role::Admin));
        assert_eq!(needs("/spool.v1.Admin/Promote"), Needs::Role(Role::Admin));
        assert_eq!(
            needs("/spool.replication.v1.Replication/Replicate"),
            Needs::Role(Role::Replica)
        );
        assert_eq!(needs("/grpc.health.v1.Health/Check"), Needs::Nothing);
        assert_eq!(needs("/spool.v1.New/Thing"), Needs::Role(Role::Admin));
    }
}
