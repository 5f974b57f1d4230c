//! The life of a fleet process, the same for every fleet binary: connect to NATS and Redis,
//! spawn its stages and background tasks, serve HTTP (at least `/healthz` and `/metrics`) until
//! SIGINT or SIGTERM, then tell everything to stop between batches and wait for it.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use imgfleet_core::ports::{StateStore, WorkQueue};
use imgfleet_core::stage::Stage;
use imgfleet_http::ServerLimits;
use imgfleet_http::ops;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connect::{FleetArgs, account_given_up};
use crate::nats_queue::NatsQueue;

/// A fleet process between start and stop (see the module docs).
pub struct FleetProcess {
    name: &'static str,
    nats: Arc<NatsQueue>,
    state: Arc<dyn StateStore>,
    stop_tx: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl FleetProcess {
    /// Connects to the fleet's NATS and Redis (retrying for `--connect-retry-secs`), and has
    /// the queue account in Redis for the messages it gives up on, so a job whose worker keeps
    /// dying on one file still completes, with that file failed and why.
    pub async fn connect(name: &'static str, fleet: &FleetArgs) -> anyhow::Result<Self> {
        let nats = fleet.connect_queue(name).await?;
        let state: Arc<dyn StateStore> = fleet.connect_state(name).await?;
        account_given_up(&nats, state.clone());
        let (stop_tx, stop) = watch::channel(false);
        Ok(Self { name, nats, state, stop_tx, stop, tasks: Vec::new() })
    }

    /// The NATS connection (heartbeats, the encoder's request/reply).
    pub fn nats(&self) -> &Arc<NatsQueue> {
        &self.nats
    }

    /// The work queue, as the stages take it.
    pub fn queue(&self) -> Arc<dyn WorkQueue> {
        self.nats.clone()
    }

    pub fn state(&self) -> Arc<dyn StateStore> {
        self.state.clone()
    }

    /// Turns true when the process stops, for tasks that watch it themselves.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Runs `task` until the process stops (it must end once [`Self::stop_signal`] turns true).
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Runs `stage` until the process stops.
    pub fn spawn_stage<S: Stage + 'static>(&mut self, stage: S) {
        let stop = self.stop.clone();
        self.spawn(async move { stage.run(stop).await });
    }

    /// Serves `router` on `host:port` (printing `<name> listening on http://ADDR`) until SIGINT
    /// or SIGTERM; then stops every stage and task between batches and waits up to `grace` for
    /// them (what is still unsettled then comes back after the queue's ack wait).
    pub async fn serve(self, host: IpAddr, port: u16, router: Router, limits: ServerLimits, grace: Duration) -> anyhow::Result<()> {
        ops::serve(self.name, host, port, router, limits, ops::shutdown_signal()).await?;
        tracing::info!("http stopped; letting the stages finish their batch");
        let _ = self.stop_tx.send(true);
        ops::join_stages(self.tasks, grace).await;
        tracing::info!("stopped");
        Ok(())
    }

    /// [`Self::serve`] with only `/healthz` and `/metrics`, within the default limits.
    pub async fn serve_ops(self, host: IpAddr, port: u16, grace: Duration) -> anyhow::Result<()> {
        let router = ops::standalone(self.name);
        self.serve(host, port, router, ServerLimits::default(), grace).await
    }
}
