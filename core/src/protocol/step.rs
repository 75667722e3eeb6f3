//! The one order every driver of a [`ClientSession`] follows ([`ClientSession::step`]), and
//! the session's timers: the relay's response deadline and the resend of changes it refused
//! for now. Time is an input (`now`, milliseconds of the driver's clock), so the simulation
//! runs the same timers on its simulated clock as the QUIC loop does on the system's.

use std::time::Duration;

use super::client::{ClientSession, SessionError};
use super::messages::Message;
use crate::ids::Millis;
use crate::store::Store;

/// What a driver feeds a client session.
#[derive(Debug)]
pub enum ClientInput {
    /// The connection opened: the session's first message (`Hello` or `Enrol`) goes out.
    Open,
    /// A message from the relay, in the order received.
    Message(Message),
    /// Nothing from the relay: local edits may have committed, or the step's
    /// [`ClientStep::timeout`] came. Uploads what waits and checks the timers.
    Poll,
}

/// What one [`ClientSession::step`] produced.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientStep {
    /// Messages to send, in order.
    pub send: Vec<Message>,
    /// Caught up with the relay and every local change sent answered.
    pub synced: bool,
    /// Local changes waiting in the outbox (sent or not).
    pub outbox: usize,
    /// Synced for [`TimerConfig::resend_after`] with changes still waiting (the relay refused
    /// them for now): a long-lived connection should reconnect so a new session resends them.
    pub resend: bool,
    /// When to step again with [`ClientInput::Poll`] if nothing else happens: the earliest
    /// timer, in the driver's milliseconds.
    pub timeout: Option<Millis>,
}

/// The session's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// How long the relay may stay silent while it owes an answer (an upload's
    /// acknowledgement, the rest of a download) before the session fails with
    /// [`SessionError::Timeout`].
    pub response_timeout: Duration,
    /// How long the session stays synced with changes refused for now before
    /// [`ClientStep::resend`] asks for a new session.
    pub resend_after: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(60),
            resend_after: Duration::from_secs(60),
        }
    }
}

/// The timers' state inside a session.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// When the relay was last heard from, or last came to owe an answer.
    last_heard: Millis,
    /// Whether the previous step ended synced.
    was_synced: bool,
    /// Since when the session has been synced with changes still in the outbox.
    leftovers_since: Option<Millis>,
}

fn ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

impl ClientSession {
    /// Feeds one input at `now` and polls, in the order every driver follows: handle the input,
    /// upload what waits (if no upload is in flight), then check the timers. Send
    /// [`ClientStep::send`] in order; an error ends the connection
    /// ([`SessionError::is_retryable`] says whether to connect again).
    pub fn step(
        &mut self,
        store: &mut Store,
        input: ClientInput,
        now: Millis,
    ) -> Result<ClientStep, SessionError> {
        let mut send = match input {
            ClientInput::Open => {
                self.timers.last_heard = now;
                self.open(store)?
            }
            ClientInput::Message(m) => {
                self.timers.last_heard = now;
                self.handle(store, m)?
            }
            ClientInput::Poll => Vec::new(),
        };
        send.extend(self.poll_upload(store)?);
        let synced = self.is_synced(store)?;
        let outbox = usize::try_from(store.outbox_len()?).unwrap_or(0);
        let cfg = self.timer_config();
        let t = &mut self.timers;
        if t.was_synced && !synced {
            // Something new is under way (a local edit went out, a push is being downloaded):
            // the relay owes an answer from now on.
            t.last_heard = now;
        }
        t.was_synced = synced;
        // A laptop told to wipe is answered only its uploads: nothing else is owed.
        let wiping = self.policy().is_some_and(|(p, _)| p.wipe.is_some());
        let owed = !synced && (!wiping || !self.uploads_answered());
        let t = &mut self.timers;
        let answer_due = owed.then(|| t.last_heard.saturating_add(ms(cfg.response_timeout)));
        if answer_due.is_some_and(|due| now > due) {
            return Err(SessionError::Timeout(cfg.response_timeout));
        }
        t.leftovers_since = match (synced && outbox > 0, t.leftovers_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
            (false, _) => None,
        };
        let resend_due = t
            .leftovers_since
            .map(|since| since.saturating_add(ms(cfg.resend_after)));
        let resend = resend_due.is_some_and(|due| now >= due);
        let timeout = match (answer_due.map(|d| d.saturating_add(1)), resend_due) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        Ok(ClientStep {
            send,
            synced,
            outbox,
            resend,
            timeout,
        })
    }
}
