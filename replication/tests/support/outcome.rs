//! How a simulation reports one seed's run (shared by the replication and failover sims).

/// A run caught with `catch_unwind`: its stats, or why it failed (a converge error or a
/// broken invariant's panic message) with the trace of events.
pub fn outcome<S>(
    run: std::thread::Result<Result<(), String>>,
    stats: S,
    trace: Vec<String>,
) -> Result<S, (String, Vec<String>)> {
    match run {
        Ok(Ok(())) => Ok(stats),
        Ok(Err(e)) => Err((format!("did not converge: {e}"), trace)),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err((msg, trace))
        }
    }
}
