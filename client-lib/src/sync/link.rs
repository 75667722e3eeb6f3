//! One QUIC stream carrying the protocol's frames: writing and reading them, counting bytes
//! and frames, and the decoder's budget for what the relay sends.

use super::*;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) bytes_sent: AtomicU64,
    pub(super) bytes_received: AtomicU64,
    pub(super) frames_sent: AtomicU64,
    pub(super) frames_received: AtomicU64,
}

/// One connection's stream, split into a reader task and a writer task so the protocol loop
/// never blocks on the network. Both report failures on the inbound channel.
pub(super) struct Link {
    pub(super) conn: quinn::Connection,
    pub(super) inbound: mpsc::Receiver<Result<Message, SyncError>>,
    pub(super) outbound: Option<mpsc::UnboundedSender<Vec<u8>>>,
    pub(super) writer: Option<JoinHandle<()>>,
    pub(super) reader: JoinHandle<()>,
    pub(super) counters: Arc<Counters>,
}

impl Link {
    pub(super) async fn open(conn: quinn::Connection) -> Result<Self, SyncError> {
        let (send, recv) = conn.open_bi().await.map_err(connection_error)?;
        Ok(Self::on_stream(conn, send, recv))
    }

    /// A link over a stream already open.
    pub(super) fn on_stream(
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let (in_tx, inbound) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_frames(recv, in_tx.clone(), counters.clone()));
        let writer = tokio::spawn(write_frames(send, out_rx, in_tx, counters.clone()));
        Self {
            conn,
            inbound,
            outbound: Some(out_tx),
            writer: Some(writer),
            reader,
            counters,
        }
    }

    /// Finishes the stream after everything queued is written, leaving the connection open
    /// (for a second stream of the connection).
    pub(super) async fn finish(mut self) {
        self.outbound = None;
        if let Some(w) = self.writer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
        }
        self.reader.abort();
    }

    pub(super) fn send(&self, msg: &Message) -> Result<(), SyncError> {
        let frame = codec::encode(msg)?;
        tracing::trace!(msg = msg.name(), bytes = frame.len(), "send");
        self.outbound
            .as_ref()
            .and_then(|o| o.send(frame).ok())
            .ok_or_else(|| SyncError::Io("the connection's writer stopped".into()))
    }

    /// Finishes the stream after everything queued is written, then closes the connection.
    /// On a clean close (`code` 0) the relay gets a moment to finish its side too, so
    /// neither end sees the other vanish.
    pub(super) async fn close(mut self, code: u32, reason: &str) {
        self.outbound = None;
        if let Some(w) = self.writer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
        }
        if code == 0 {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                // Anything still arriving is dropped; the next session fetches it again.
                while let Some(Ok(_)) = self.inbound.recv().await {}
            })
            .await;
        }
        self.conn.close(code.into(), reason.as_bytes());
        self.reader.abort();
    }
}

pub(super) async fn read_frames(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Message, SyncError>>,
    counters: Arc<Counters>,
) {
    let read_err = |e: quinn::ReadExactError| match e {
        quinn::ReadExactError::FinishedEarly(0) => {
            SyncError::Closed("the relay ended the session".into())
        }
        quinn::ReadExactError::FinishedEarly(n) => SyncError::Closed(format!(
            "the relay ended the stream inside a frame ({n} bytes)"
        )),
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            connection_error(c)
        }
        quinn::ReadExactError::ReadError(quinn::ReadError::ZeroRttRejected) => {
            SyncError::EarlyDataRejected
        }
        quinn::ReadExactError::ReadError(other) => SyncError::Io(other.to_string()),
    };
    loop {
        let mut len = [0u8; 4];
        let r = match recv.read_exact(&mut len).await {
            Err(e) => Err(read_err(e)),
            Ok(()) => match codec::check_len(u32::from_be_bytes(len)) {
                Err(e) => Err(SyncError::Codec(e)),
                Ok(n) => {
                    let mut body = vec![0u8; n];
                    match recv.read_exact(&mut body).await {
                        Err(quinn::ReadExactError::FinishedEarly(k)) => Err(SyncError::Closed(
                            format!("the relay ended the stream inside a frame ({k} of {n} bytes)"),
                        )),
                        Err(e) => Err(read_err(e)),
                        Ok(()) => {
                            counters
                                .bytes_received
                                .fetch_add(4 + n as u64, Ordering::Relaxed);
                            counters.frames_received.fetch_add(1, Ordering::Relaxed);
                            codec::decode(&body).map_err(SyncError::Codec)
                        }
                    }
                }
            },
        };
        let failed = r.is_err();
        if tx.send(r).await.is_err() || failed {
            return;
        }
    }
}

pub(super) async fn write_frames(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    errors: mpsc::Sender<Result<Message, SyncError>>,
    counters: Arc<Counters>,
) {
    while let Some(frame) = rx.recv().await {
        if let Err(e) = send.write_all(&frame).await {
            let err = match e {
                quinn::WriteError::ConnectionLost(c) => connection_error(c),
                quinn::WriteError::ZeroRttRejected => SyncError::EarlyDataRejected,
                other => SyncError::Io(other.to_string()),
            };
            let _ = errors.send(Err(err)).await;
            return;
        }
        counters
            .bytes_sent
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        counters.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
    let _ = send.finish();
}
