//! What `/api/shovels` shows of a shovel (RabbitMQ's
//! `rabbit_shovel_status`): its state since when, and where it moves
//! messages once running.

/// RabbitMQ's `starting`, `running` (with its ends) and `terminated`
/// (with the reason).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum State {
    Starting,
    Running(Vec<(&'static str, String)>),
    Terminated(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) state: State,
    /// When the state was last reported (seconds since the Unix epoch).
    pub(crate) since: u64,
}

impl Status {
    pub(crate) fn starting() -> Status {
        Status {
            state: State::Starting,
            since: crate::broker::timers::now_ms() / 1000,
        }
    }

    pub(crate) fn set(&mut self, state: State) {
        self.state = state;
        self.since = crate::broker::timers::now_ms() / 1000;
    }
}
