//! The `grpc.health.v1.Health` service (tonic-health). The overall status (service name "")
//! follows the same rule as `/health`: SERVING while this member knows a leader and no alarm
//! is raised, NOT_SERVING otherwise. Other service names are unknown (NOT_FOUND), as in etcd,
//! which registers only "".

use std::sync::Arc;
use std::time::Duration;

use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::server::EtcdServer;

/// How often the status is re-evaluated besides on every Raft metrics change (alarms are
/// not Raft metrics).
const RECHECK: Duration = Duration::from_millis(500);

/// The service, and the task keeping its status current (it ends with the runtime).
pub fn service(server: Arc<EtcdServer>) -> HealthServer<impl Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(track(server, reporter));
    service
}

async fn track(server: Arc<EtcdServer>, reporter: HealthReporter) {
    let mut metrics = server.raft.metrics();
    let mut last = None;
    loop {
        let status = if crate::http::is_healthy(&server) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            last = Some(status);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}
