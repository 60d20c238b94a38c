//! The in-process OPC UA simulator: a real async-opcua server on loopback (security None,
//! anonymous) serving tags of the simulated plant (the `simulator` source's names and
//! signals) as Double variables `nsu=urn:ferrule:plant;s=<vendor path>`, updated once per
//! simulator scan, so subscriptions get data changes.

use std::net::SocketAddr;
use std::time::Duration;

use opcua::nodes::{ObjectBuilder, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::ServerBuilder;
use opcua::types::{DataTypeId, DataValue, DateTime, NodeId, ObjectId, Variant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::OpcUaSimulatorConfig;
use crate::sources::simulator::{describe_tag, sample, SimulatorConfig};

/// The namespace of the simulated plant's variables.
pub const PLANT_NAMESPACE: &str = "urn:ferrule:plant";

struct StopServer(opcua::server::ServerHandle);

impl Drop for StopServer {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A server builder whose limits let one client monitor every served tag.
fn simulator_builder(tags: u32) -> ServerBuilder {
    let mut builder = ServerBuilder::new_anonymous("Ferrule plant simulator");
    let limits = &mut builder.limits_mut().subscriptions;
    limits.max_monitored_items_per_sub = tags as usize + 1000;
    limits.max_notifications_per_publish = 1000;
    // async-opcua drops the oldest queued notification once `len >= max` (0 would keep at
    // most one): allow a deep queue so a slow publish cycle never loses data.
    limits.max_queued_notifications = 100_000;
    // The client uses one subscription per 1000 items.
    limits.max_subscriptions_per_session = tags as usize / 1000 + 10;
    limits.max_pending_publish_requests = 4 * (tags as usize / 1000 + 10);
    builder
}

/// The plant the simulator server takes its tags from.
pub fn plant_of(c: &OpcUaSimulatorConfig) -> SimulatorConfig {
    SimulatorConfig {
        tags: c.plant_tags,
        ..SimulatorConfig::default()
    }
}

/// Starts the server on `c.listen` (its own certificate store in `pki`) and the task updating
/// its variables; both stop when `shutdown` becomes true. Returns once the server listens.
pub async fn serve_plant(
    c: &OpcUaSimulatorConfig,
    source: &str,
    pki: std::path::PathBuf,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), String> {
    let (server, handle) = simulator_builder(c.tags)
        .application_uri("urn:ferrule:simulator")
        .product_uri("urn:ferrule")
        .host(c.listen.ip().to_string())
        .port(c.listen.port())
        .pki_dir(pki)
        .create_sample_keypair(true)
        .diagnostics_enabled(false)
        .max_array_length(65_535)
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: PLANT_NAMESPACE.to_string(),
                ..Default::default()
            },
            "plant",
        ))
        .build()
        .map_err(|e| format!("OPC UA simulator: {e}"))?;
    let manager = handle
        .node_managers()
        .get_of_type::<SimpleNodeManager>()
        .ok_or("OPC UA simulator: no node manager")?;
    let ns = handle
        .get_namespace_index(PLANT_NAMESPACE)
        .ok_or("OPC UA simulator: no plant namespace")?;
    let plant = plant_of(c);
    let tags: Vec<u32> = (c.first_tag..c.first_tag + c.tags).collect();
    let ids: Vec<NodeId> = tags
        .iter()
        .map(|i| NodeId::new(ns, describe_tag(&plant, source, *i).vendor_path))
        .collect();
    {
        let mut space = manager.address_space().write();
        let folder = NodeId::new(ns, "Plant");
        ObjectBuilder::new(&folder, "Plant", "Plant")
            .is_folder()
            .organized_by(ObjectId::ObjectsFolder)
            .insert(&mut *space);
        for (i, id) in tags.iter().zip(&ids) {
            let name = describe_tag(&plant, source, *i).vendor_path;
            VariableBuilder::new(id, name.as_str(), name.as_str())
                .data_type(DataTypeId::Double)
                .value(sample(&plant, *i, 0).0)
                .organized_by(&folder)
                .insert(&mut *space);
        }
    }
    // Bound here, so a port in use is reported as such and clients may connect at once.
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .map_err(|e| format!("OPC UA simulator cannot listen on {}: {e}", c.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let info = handle.info().clone();
    let interval = Duration::from_millis(c.interval_ms.max(1));
    let task = tokio::spawn(async move {
        let run = tokio::spawn(server.run_with(listener));
        // Stops the server also when this task is aborted.
        let stop = StopServer(handle.clone());
        let mut ticker = tokio::time::interval(interval);
        let mut scan = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            let now = DateTime::now();
            let values: Vec<DataValue> = tags
                .iter()
                .map(|i| {
                    let mut dv =
                        DataValue::new_at(Variant::Double(sample(&plant, *i, scan).0), now);
                    dv.server_timestamp = Some(now);
                    dv
                })
                .collect();
            let _ = manager.set_values(
                handle.subscriptions(),
                ids.iter().zip(values).map(|(id, v)| (id, None, v)),
            );
            scan += 1;
        }
        drop(stop);
        let _ = run.await;
    });
    for _ in 0..200 {
        if info.is_running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((addr, task))
}
