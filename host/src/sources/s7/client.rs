//! An S7 connection over TCP: ISO-on-TCP connect with TSAPs, PDU size negotiation, and
//! multi-item reads, each bounded by a timeout. A transport failure ends the connection (the
//! caller reconnects); a refused item is that item's error only.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::proto::{self, FrameError, ItemError, ItemSpec, TPKT_LEN};
use super::status::{self, Failure};

/// The most bytes a reassembled S7 PDU may take (a guard against a peer's nonsense lengths).
const MAX_PDU_BYTES: usize = 64 * 1024;

pub struct Connection {
    stream: TcpStream,
    pdu_ref: u16,
    /// The PDU size the CPU granted.
    pub pdu: u16,
    timeout: Duration,
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub local_tsap: u16,
    pub remote_tsap: u16,
    pub pdu_size: u16,
    pub timeout: Duration,
}

impl Connection {
    /// Connects, opens the ISO transport and negotiates the PDU size, all within the timeout.
    pub async fn open(t: &Target) -> Result<Connection, Failure> {
        let ms = t.timeout.as_millis() as u64;
        let attempt = async {
            let stream = TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(status::connection)?;
            let _ = stream.set_nodelay(true);
            let mut c = Connection {
                stream,
                pdu_ref: 0,
                pdu: 0,
                timeout: t.timeout,
            };
            c.send(&proto::connect_request(t.local_tsap, t.remote_tsap))
                .await?;
            let cotp = c.frame().await?;
            proto::check_connect_confirm(&cotp).map_err(|e| status::connection(e.to_string()))?;
            let r = c.next_ref();
            c.send(&proto::setup_request(r, t.pdu_size)).await?;
            let pdu = c.pdu_bytes().await?;
            let ack = proto::parse_ack(&pdu).map_err(|e| status::frame(&e))?;
            let granted = proto::parse_setup(&ack).map_err(|e| status::frame(&e))?;
            if granted < 64 {
                return Err(status::connection(format!(
                    "the CPU granted a PDU of {granted} bytes"
                )));
            }
            c.pdu = granted.min(t.pdu_size);
            Ok(c)
        };
        match tokio::time::timeout(t.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Failure {
                reason: format!("connection failed: no answer within {ms} ms"),
                ..status::timeout(ms)
            }),
        }
    }

    fn next_ref(&mut self) -> u16 {
        self.pdu_ref = self.pdu_ref.wrapping_add(1).max(1);
        self.pdu_ref
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(status::connection)
    }

    /// One TPKT frame's payload (the COTP part).
    async fn frame(&mut self) -> Result<Vec<u8>, Failure> {
        let mut h = [0u8; TPKT_LEN];
        self.stream
            .read_exact(&mut h)
            .await
            .map_err(status::connection)?;
        let n = proto::tpkt_remaining(&h).map_err(|e| status::frame(&e))?;
        let mut body = vec![0u8; n];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(status::connection)?;
        Ok(body)
    }

    /// One S7 PDU, reassembled from COTP data fragments.
    async fn pdu_bytes(&mut self) -> Result<Vec<u8>, Failure> {
        let mut pdu = Vec::new();
        loop {
            let cotp = self.frame().await?;
            let (part, last) = proto::data_payload(&cotp).map_err(|e| status::frame(&e))?;
            pdu.extend_from_slice(part);
            if pdu.len() > MAX_PDU_BYTES {
                return Err(status::frame(&FrameError::Malformed(format!(
                    "a PDU of more than {MAX_PDU_BYTES} bytes"
                ))));
            }
            if last {
                return Ok(pdu);
            }
        }
    }

    /// Reads `items` in one request. `Err`: the connection is no longer usable (timeout,
    /// transport failure, a malformed or mismatched response); `Ok(Err)` for the whole
    /// request: the CPU refused it (its items all fail, the connection stays).
    pub async fn read(
        &mut self,
        items: &[ItemSpec],
    ) -> Result<Result<Vec<Result<Vec<u8>, ItemError>>, Failure>, Failure> {
        let ms = self.timeout.as_millis() as u64;
        let timeout = self.timeout;
        let r = self.next_ref();
        let exchange = async {
            self.send(&proto::read_request(r, items)).await?;
            self.pdu_bytes().await
        };
        let pdu = match tokio::time::timeout(timeout, exchange).await {
            Ok(p) => p?,
            Err(_) => return Err(status::timeout(ms)),
        };
        let ack = match proto::parse_ack(&pdu) {
            Ok(a) => a,
            Err(e @ FrameError::Refused { .. }) => return Ok(Err(status::frame(&e))),
            Err(e) => return Err(status::frame(&e)),
        };
        if ack.pdu_ref != r {
            return Err(status::frame(&FrameError::Malformed(format!(
                "response to request {} where {r} was expected",
                ack.pdu_ref
            ))));
        }
        proto::parse_read(&ack, items)
            .map(Ok)
            .map_err(|e| status::frame(&e))
    }
}
