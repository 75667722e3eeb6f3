//! Streaming downloads (protocol 4): a `Pull` is answered with a window of batches, each
//! `More` with one more, so the link never idles while the laptop applies a batch.

use super::*;
use crate::protocol::messages::DOWNLOAD_WINDOW;

fn batches(out: &[Message]) -> Vec<bool> {
    out.iter()
        .filter_map(|m| match m {
            Message::Batch { caught_up, .. } => Some(*caught_up),
            _ => None,
        })
        .collect()
}

/// A relay holding 150 customers, and a fresh laptop's session in 16 KiB batches whose first
/// flight the relay has answered: the answers, not yet given to the laptop.
fn opened_on_150_customers() -> (
    tempfile::TempDir,
    Store,
    MemRelay,
    ClientSession,
    RelaySession,
    Vec<Message>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut office = Store::open(dir.path().join("office.db")).unwrap();
    let mut laptop = Store::open(dir.path().join("laptop.db")).unwrap();
    let mut relay = MemRelay::new();
    for i in 0..150 {
        add_customer(
            &mut office,
            &format!("customer {i:03} of the northern district"),
        );
    }
    run(&mut office, &mut relay);
    let mut cs = ClientSession::new(ClientConfig {
        pull_bytes: 16 << 10,
        ..Default::default()
    });
    let mut rs = RelaySession::new(RelayLimits {
        max_batch_bytes: 16 << 10,
        ..Default::default()
    });
    let open = cs.step(&mut laptop, ClientInput::Open, 0).unwrap().send;
    let mut answers = Vec::new();
    for m in open {
        answers.extend(rs.handle(&mut relay, m).messages);
    }
    (dir, laptop, relay, cs, rs, answers)
}

#[test]
fn a_pull_is_answered_with_a_window_of_batches_and_each_more_with_one() {
    let (_dir, mut laptop, mut relay, mut cs, mut rs, mut answers) = opened_on_150_customers();
    assert_eq!(batches(&answers), vec![false; DOWNLOAD_WINDOW as usize]);
    // Ahead of the batches, what the download has left: every customer, and its bytes.
    let Some(Message::Waiting { documents, bytes }) = answers
        .iter()
        .find(|m| matches!(m, Message::Waiting { .. }))
        .cloned()
    else {
        panic!("no Waiting in {answers:?}");
    };
    assert_eq!(documents, 150);
    assert!(bytes > 150 * 100, "{bytes}");
    let mut received = 0;
    let mut rounds = 0;
    while !answers.is_empty() {
        rounds += 1;
        let mut asks = Vec::new();
        for m in answers.drain(..) {
            if let Message::Batch {
                items, caught_up, ..
            } = &m
            {
                received += items.len();
                let step = cs
                    .step(&mut laptop, ClientInput::Message(m.clone()), rounds)
                    .unwrap();
                // The estimate of what is left shrinks with every batch, to nothing.
                let (docs_left, _) = cs.download_left().expect("the relay said");
                let want_left = if *caught_up { 0 } else { 150 - received as u64 };
                assert_eq!(docs_left, want_left);
                // Each batch that is not the last asks for one more, and nothing else.
                let want: Vec<&str> = if *caught_up { vec![] } else { vec!["More"] };
                assert_eq!(
                    step.send.iter().map(Message::name).collect::<Vec<_>>(),
                    want
                );
                asks.extend(step.send);
            } else {
                cs.step(&mut laptop, ClientInput::Message(m), rounds)
                    .unwrap();
            }
        }
        for m in asks {
            let out = rs.handle(&mut relay, m).messages;
            assert!(batches(&out).len() <= 1, "one batch for each More");
            answers.extend(out);
        }
    }
    assert!(cs.is_synced(&laptop).unwrap());
    assert_eq!(received, 150, "every document once");
    assert_eq!(laptop.doc_count().unwrap(), 150);
}

#[test]
fn a_paused_session_takes_what_is_in_flight_and_asks_for_no_more() {
    let (_dir, mut laptop, mut relay, mut cs, _rs, answers) = opened_on_150_customers();
    cs.pause();
    let mut batch_seen = 0;
    for m in answers {
        let is_batch = matches!(m, Message::Batch { .. });
        let step = cs.step(&mut laptop, ClientInput::Message(m), 1).unwrap();
        assert!(
            step.send
                .iter()
                .all(|m| matches!(m, Message::Outbox { .. })),
            "nothing asked while paused: {:?}",
            step.send
        );
        if is_batch {
            batch_seen += 1;
            // Settled only once the window's last batch arrived.
            assert_eq!(cs.is_settled(), batch_seen == DOWNLOAD_WINDOW as usize);
        }
    }
    assert!(cs.download_waiting());
    // The next session goes on from the stored cursor and gets the rest, once.
    let s = run(&mut laptop, &mut relay);
    assert_eq!(laptop.doc_count().unwrap(), 150, "{s:?}");
}
