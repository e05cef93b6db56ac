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

pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A run of one seed: its stats, or why it failed with the trace of events.
pub type Run<S> = Result<S, (String, Vec<String>)>;

/// Run every seed, summing the stats with `add`; a failing seed panics with its last events
/// and how to replay it (`replay`: the command, `{seed}` standing for the seed). Returns
/// the sum and how many seeds ran.
pub fn run_seeds<S: Default>(
    seeds: impl Iterator<Item = u64>,
    run: impl Fn(u64) -> Run<S>,
    add: impl Fn(&mut S, &S),
    replay: &str,
) -> (S, u64) {
    let (mut total, mut n) = (S::default(), 0);
    for seed in seeds {
        match run(seed) {
            Ok(s) => add(&mut total, &s),
            Err((msg, trace)) => {
                let tail = trace[trace.len().saturating_sub(40)..].join("\n");
                let replay = replay.replace("{seed}", &seed.to_string());
                panic!("seed {seed} failed: {msg}\nlast events:\n{tail}\nreplay: {replay}");
            }
        }
        n += 1;
    }
    (total, n)
}

/// Replay the seed named by the variable `var` (if set), printing every event.
pub fn replay<S: std::fmt::Debug>(var: &str, run: impl Fn(u64) -> Run<S>) {
    let Some(seed) = env_u64(var) else {
        return;
    };
    match run(seed) {
        Ok(s) => eprintln!("seed {seed} passed: {s:?}"),
        Err((msg, trace)) => {
            eprintln!("{}", trace.join("\n"));
            panic!("seed {seed} failed: {msg}");
        }
    }
}
