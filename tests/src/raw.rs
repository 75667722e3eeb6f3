//! A raw protocol client over real QUIC, for tests that send what a well-behaved client never
//! would: frames out of order, forged or oversized messages, bytes that are no frame at all.

use std::net::SocketAddr;
use std::time::Duration;

use fieldsync_core::protocol::codec::{self, FrameDecoder};
use fieldsync_core::protocol::messages::MAGIC;
use fieldsync_core::protocol::{Message, PROTOCOL_VERSION};
use uuid::Uuid;

/// How long [`RawConn::next`] waits for the relay.
const WAIT: Duration = Duration::from_secs(20);

/// One connection to a relay with its single stream.
pub struct RawConn {
    /// The stream to the relay.
    pub send: quinn::SendStream,
    /// The stream from the relay.
    pub recv: quinn::RecvStream,
    /// What arrived from the relay and was not read yet (messages sent back to back can
    /// arrive in one read).
    decoder: FrameDecoder,
    _endpoint: quinn::Endpoint,
}

impl RawConn {
    /// Connects to the relay at `addr` serving the certificate pinned by `pin`.
    pub async fn open(addr: SocketAddr, pin: &str) -> anyhow::Result<Self> {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut endpoint = quinn::Endpoint::client(local)?;
        endpoint.set_default_client_config(fieldsync_relay::tls::client_config(pin)?);
        let conn = endpoint
            .connect(addr, fieldsync_relay::tls::SERVER_NAME)?
            .await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(Self {
            send,
            recv,
            decoder: FrameDecoder::new(),
            _endpoint: endpoint,
        })
    }

    /// Sends bytes as they are (the relay may already have closed: a failed write is an
    /// answer too).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.send.write_all(bytes).await;
    }

    /// Sends one message as a frame (an error only if it cannot be encoded).
    pub async fn send(&mut self, msg: &Message) -> Result<(), codec::CodecError> {
        let frame = codec::encode(msg)?;
        self.send_raw(&frame).await;
        Ok(())
    }

    /// Says `Hello` as `device_id` without a credential (an open relay admits it) and returns
    /// the answer, `None` if the relay closed without one. The `Policy` that follows a
    /// `Welcome` (protocol 7) is read too, so the next message is the answer to what is sent
    /// next.
    pub async fn hello(&mut self, device_id: Uuid) -> Option<Message> {
        let hello = Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id,
            credential: None,
            agent: "hostile".into(),
        };
        self.send(&hello).await.ok()?;
        let answer = self.next().await;
        if matches!(answer, Some(Message::Welcome { .. })) {
            let policy = self.next().await;
            assert!(
                matches!(policy, Some(Message::Policy { .. })),
                "a Policy follows the Welcome: {policy:?}"
            );
        }
        answer
    }

    /// The next message, or `None` once the relay closed the stream or the connection.
    pub async fn next(&mut self) -> Option<Message> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if let Ok(Some(m)) = self.decoder.next_message() {
                return Some(m);
            }
            match tokio::time::timeout(WAIT, self.recv.read(&mut buf)).await {
                Ok(Ok(Some(n))) => self.decoder.push(&buf[..n]),
                _ => return None,
            }
        }
    }

    /// Reads until the relay ends the exchange; returns the last message (its error).
    pub async fn last(&mut self) -> Option<Message> {
        let mut last = None;
        while let Some(m) = self.next().await {
            last = Some(m);
        }
        last
    }
}
