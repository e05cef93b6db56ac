//! Logs waiting on a metadata job (see `meta_worker`): the command that needed the job, to
//! run again (or fail) once it is done, and the log's later commands, held in order.
//! Held commands are bounded in all (`queue_depth`): past it the storage thread takes no
//! new command until a job is done.

use std::collections::{HashMap, VecDeque};

use super::cmd::Cmd;

#[derive(Default)]
pub(super) struct Parking {
    logs: HashMap<u64, Parked>,
    held: usize,
    held_max: usize,
}

#[derive(Default)]
pub(super) struct Parked {
    /// The command that waits on the job (none for periodic retention).
    pub cause: Option<Cmd>,
    /// The log's commands that came since.
    pub held: VecDeque<Cmd>,
}

impl Parking {
    pub fn new(held_max: usize) -> Self {
        Parking {
            held_max: held_max.max(1),
            ..Parking::default()
        }
    }

    pub fn is_parked(&self, id: u64) -> bool {
        self.logs.contains_key(&id)
    }

    pub fn any(&self) -> bool {
        !self.logs.is_empty()
    }

    /// Whether another command may be taken from the queue.
    pub fn has_room(&self) -> bool {
        self.held < self.held_max
    }

    pub fn park(&mut self, id: u64, cause: Option<Cmd>) {
        let old = self.logs.insert(
            id,
            Parked {
                cause,
                held: VecDeque::new(),
            },
        );
        assert!(old.is_none(), "a log waits on one job at a time");
    }

    /// Hold `cmd` until log `id`'s job is done.
    pub fn hold(&mut self, id: u64, cmd: Cmd) {
        self.logs
            .get_mut(&id)
            .expect("held for a parked log")
            .held
            .push_back(cmd);
        self.held += 1;
    }

    pub fn unpark(&mut self, id: u64) -> Parked {
        let p = self.logs.remove(&id).expect("a job's log is parked");
        self.held -= p.held.len();
        p
    }
}
