//! An EtherNet/IP session over TCP: register session, Forward Open for connected messaging
//! (unconnected messages when the controller refuses it), and request/reply with a timeout.
//! A transport failure ends the session (the caller reconnects).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cip::{self, ENCAP_HEADER};
use super::status::{self, Failure};

/// The largest encapsulated frame accepted.
const MAX_FRAME: usize = 65_535 + ENCAP_HEADER;

#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Route path to the CPU (port, link pairs); empty when direct.
    pub route: Vec<u8>,
    pub connected: bool,
    pub packet: u16,
    pub timeout: Duration,
}

pub struct Session {
    stream: TcpStream,
    handle: u32,
    /// O→T connection id and the next sequence number, when connected.
    connection: Option<(u32, u16)>,
    route: Vec<u8>,
    timeout: Duration,
    context: u64,
    /// Why the controller refused a connection (then messages are unconnected).
    pub refused_connection: Option<String>,
}

impl Session {
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    pub async fn open(t: &Target) -> Result<Session, Failure> {
        let ms = t.timeout.as_millis() as u64;
        let attempt = async {
            let stream = TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(status::connection)?;
            let _ = stream.set_nodelay(true);
            let mut s = Session {
                stream,
                handle: 0,
                connection: None,
                route: t.route.clone(),
                timeout: t.timeout,
                context: 0,
                refused_connection: None,
            };
            s.send(&cip::register_session()).await?;
            let (h, _) = s.frame().await?;
            if h.command != cip::REGISTER_SESSION || h.status != 0 {
                return Err(status::connection(format!(
                    "register session refused (status 0x{:08X})",
                    h.status
                )));
            }
            s.handle = h.session;
            if t.connected {
                let serial = (crate::model::now_ns() as u16) | 1;
                let t_to_o = 0x4652_0000 | serial as u32;
                let fo = cip::forward_open(t_to_o, serial, &t.route, t.packet);
                let reply = s.unconnected_raw(&fo).await?;
                let r = cip::parse_reply(&reply).map_err(|e| status::malformed(&e))?;
                if r.status == 0 {
                    let (o_to_t, _) =
                        cip::parse_forward_open(&r).map_err(|e| status::malformed(&e))?;
                    s.connection = Some((o_to_t, 1));
                } else {
                    s.refused_connection = Some(format!(
                        "Forward Open refused: {} (0x{:02X}, extended {:04X?})",
                        cip::status_name(r.status),
                        r.status,
                        r.extended
                    ));
                }
            }
            Ok(s)
        };
        match tokio::time::timeout(t.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Failure {
                reason: format!("connection failed: no answer within {ms} ms"),
                ..status::timeout(ms)
            }),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(status::connection)
    }

    async fn frame(&mut self) -> Result<(cip::EncapHeader, Vec<u8>), Failure> {
        let mut h = [0u8; ENCAP_HEADER];
        self.stream
            .read_exact(&mut h)
            .await
            .map_err(status::connection)?;
        let header = cip::parse_header(&h);
        let n = header.length as usize;
        if n + ENCAP_HEADER > MAX_FRAME {
            return Err(status::malformed(&cip::Malformed(format!(
                "a frame of {n} bytes"
            ))));
        }
        let mut body = vec![0u8; n];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(status::connection)?;
        Ok((header, body))
    }

    /// One unconnected request to the adapter itself (SendRRData, no routing).
    async fn unconnected_raw(&mut self, message: &[u8]) -> Result<Vec<u8>, Failure> {
        self.context = self.context.wrapping_add(1);
        let frame = cip::send_rr_data(self.handle, self.context, message);
        self.send(&frame).await?;
        loop {
            let (h, body) = self.frame().await?;
            if h.command != cip::SEND_RR_DATA || h.context != self.context {
                continue; // a late reply to an earlier, timed-out request
            }
            if h.status != 0 {
                return Err(status::connection(format!(
                    "encapsulation status 0x{:08X}",
                    h.status
                )));
            }
            let (payload, _) = cip::cip_payload(&body).map_err(|e| status::malformed(&e))?;
            return Ok(payload.to_vec());
        }
    }

    /// Sends a CIP request to the CPU and returns its reply. `Err`: the session is no longer
    /// usable; a CIP error status comes back inside the reply.
    pub async fn request(&mut self, message: &[u8]) -> Result<Vec<u8>, Failure> {
        let ms = self.timeout.as_millis() as u64;
        let timeout = self.timeout;
        let exchange = async {
            match self.connection {
                Some((id, seq)) => {
                    self.connection = Some((id, seq.wrapping_add(1)));
                    let frame = cip::send_unit_data(self.handle, id, seq, message);
                    self.send(&frame).await?;
                    loop {
                        let (h, body) = self.frame().await?;
                        if h.command != cip::SEND_UNIT_DATA {
                            continue;
                        }
                        if h.status != 0 {
                            return Err(status::connection(format!(
                                "encapsulation status 0x{:08X}",
                                h.status
                            )));
                        }
                        let (payload, got) =
                            cip::cip_payload(&body).map_err(|e| status::malformed(&e))?;
                        if got != Some(seq) {
                            continue; // a late reply to an earlier, timed-out request
                        }
                        return Ok(payload.to_vec());
                    }
                }
                None if self.route.is_empty() => self.unconnected_raw(message).await,
                None => {
                    let wrapped = cip::unconnected_send(message, &self.route);
                    self.unconnected_raw(&wrapped).await
                }
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(status::timeout(ms)),
        }
    }
}
