//! The `grpc.health.v1.Health` service (types from tonic-health). The overall status
//! (service name "") follows the same rule as `/health`: SERVING while this member knows a
//! leader and no alarm is raised, NOT_SERVING otherwise. etcd registers only "", so any
//! other name is grpc-go's unknown service: `NotFound "unknown service"` for Check and a
//! SERVICE_UNKNOWN status for Watch (tonic-health's own server words these differently,
//! hence this small implementation of the generated trait).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::server::EtcdServer;

/// How often the status is re-evaluated besides on every Raft metrics change (alarms are
/// not Raft metrics).
const RECHECK: Duration = Duration::from_millis(500);

pub struct HealthService(watch::Receiver<ServingStatus>);

/// The service, and the task keeping its status current (it ends with the runtime).
pub fn service(server: Arc<EtcdServer>) -> HealthServer<HealthService> {
    let (tx, rx) = watch::channel(status(&server));
    tokio::spawn(track(server, tx));
    HealthServer::new(HealthService(rx))
}

fn status(server: &EtcdServer) -> ServingStatus {
    if crate::http::is_healthy(server) {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

async fn track(server: Arc<EtcdServer>, tx: watch::Sender<ServingStatus>) {
    let mut metrics = server.raft.metrics();
    loop {
        tx.send_if_modified(|s| std::mem::replace(s, status(&server)) != *s);
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !req.into_inner().service.is_empty() {
            return Err(Status::not_found("unknown service"));
        }
        Ok(Response::new(response(*self.0.borrow())))
    }

    type WatchStream = StatusStream;

    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if !req.into_inner().service.is_empty() {
            // grpc-go answers an unknown service with that status, and keeps the stream open.
            let once = futures::stream::once(async { Ok(response(ServingStatus::ServiceUnknown)) })
                .chain(futures::stream::pending());
            return Ok(Response::new(Box::pin(once)));
        }
        let updates = WatchStream::new(self.0.clone()).map(|s| Ok(response(s)));
        Ok(Response::new(Box::pin(updates)))
    }
}
