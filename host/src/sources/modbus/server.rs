//! The in-process Modbus TCP simulator: a real tokio-modbus server on loopback serving
//! tags of the simulated plant (the `simulator` source's names and signals) as `f32` (ABCD)
//! in holding and input registers `2k`, `2k+1`. Reads past the served range get exception
//! 0x02 (illegal data address), other functions 0x01 (illegal function).

use std::future::{ready, Ready};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use super::codec::encode_bytes;
use super::config::{SimulatorServerConfig, WordOrder};
use crate::sources::simulator::{sample, SimulatorConfig};

/// Serves the plant's signals, computed at request time.
struct PlantService {
    plant: SimulatorConfig,
    first_tag: u32,
    tags: u32,
    interval_ms: u64,
    start: Instant,
}

impl PlantService {
    fn registers(&self, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        let end = start as u32 + count as u32;
        if count == 0 || end > self.tags * 2 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let scan = self.start.elapsed().as_millis() as u64 / self.interval_ms;
        let mut out = Vec::with_capacity(count as usize);
        let mut reg = start as u32;
        while reg < end {
            let k = reg / 2;
            let (value, _) = sample(&self.plant, self.first_tag + k, scan);
            let words = encode_bytes(&(value as f32).to_be_bytes(), WordOrder::ABCD);
            let from = (reg % 2) as usize;
            for w in &words[from..] {
                if reg < end {
                    out.push(*w);
                    reg += 1;
                }
            }
        }
        Ok(out)
    }
}

impl tokio_modbus::server::Service for PlantService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        ready(match req.request {
            Request::ReadHoldingRegisters(a, n) => {
                self.registers(a, n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, n) => {
                self.registers(a, n).map(Response::ReadInputRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// The plant the simulator server takes its tags from.
pub fn plant_of(c: &SimulatorServerConfig) -> SimulatorConfig {
    SimulatorConfig {
        tags: c.plant_tags,
        ..SimulatorConfig::default()
    }
}

/// Binds `c.listen` and serves until `shutdown` becomes true. The listener is bound before
/// this returns, so clients can connect at once.
pub async fn serve_plant(
    c: &SimulatorServerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(c.listen).await?;
    let addr = listener.local_addr()?;
    let service = Arc::new(PlantService {
        plant: plant_of(c),
        first_tag: c.first_tag,
        tags: c.tags,
        interval_ms: c.interval_ms.max(1),
        start: Instant::now(),
    });
    let server = Server::new(listener);
    let task = tokio::spawn(async move {
        let on_connected = |stream, socket_addr| {
            let service = Arc::clone(&service);
            async move { accept_tcp_connection(stream, socket_addr, |_| Ok(Some(Arc::clone(&service)))) }
        };
        let on_error = |e: io::Error| tracing::debug!("modbus simulator connection: {e}");
        tokio::select! {
            r = server.serve(&on_connected, on_error) => {
                if let Err(e) = r {
                    tracing::warn!("modbus simulator on {addr} stopped: {e}");
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_hold_the_plant_signals_and_refuse_reads_past_the_end() {
        let s = PlantService {
            plant: SimulatorConfig {
                tags: 100,
                ..SimulatorConfig::default()
            },
            first_tag: 10,
            tags: 5,
            interval_ms: 1_000_000,
            start: Instant::now(),
        };
        let regs = s.registers(2, 4).unwrap();
        let v = f32::from_be_bytes([
            (regs[0] >> 8) as u8,
            regs[0] as u8,
            (regs[1] >> 8) as u8,
            regs[1] as u8,
        ]);
        assert_eq!(v, sample(&s.plant, 11, 0).0 as f32);
        // An odd start returns the low word of tag 11 first.
        assert_eq!(s.registers(3, 1).unwrap(), vec![regs[1]]);
        assert_eq!(s.registers(8, 3), Err(ExceptionCode::IllegalDataAddress));
    }
}
