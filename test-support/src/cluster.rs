//! A real NATS cluster for tests and benches: `n` `nats-server -js` processes on loopback,
//! routed to each other, with clustered JetStream (replicated streams, KV and object store).
//!
//! ```no_run
//! # async fn demo() {
//! let cluster = narun_test_support::NatsCluster::start(3).await;
//! let client = async_nats::connect(cluster.addrs()).await.unwrap();
//! cluster.server(0).stop();  // kill one member; the others keep the quorum
//! cluster.server(0).restart();
//! # }
//! ```
//!
//! Each member is a [`NatsServer`] (its own client, monitor and route ports, its own store
//! dir), so `stop` / `restart` / `pid` work per member. [`NatsCluster::start`] returns once
//! every member is ready and JetStream has a meta leader, so a test can create replicated
//! buckets at once.

use crate::{NatsServer, T, free_ports};
use std::time::{Duration, Instant};

/// A running NATS cluster owned by a test. Dropping it kills every member.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start `n` (≥ 1) routed servers with JetStream and wait until JetStream answers.
    pub async fn start(n: usize) -> Self {
        assert!(n >= 1, "a cluster needs at least one server");
        let name = format!("narun-test-{}", std::process::id());
        let route_ports: Vec<u16> = (0..n).map(|_| free_ports::<1>()[0]).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let servers = route_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let config = format!(
                    "server_name: n{i}\ncluster {{\n  name: {name}\n  listen: 127.0.0.1:{port}\n  routes: [\n    {}\n  ]\n}}\n",
                    routes.join("\n    ")
                );
                NatsServer::start_with_config(&config)
            })
            .collect();
        let cluster = NatsCluster { servers };
        cluster.wait_for_jetstream(T).await;
        cluster
    }

    /// All members' client URLs, comma-separated (the form narund, narunctl and
    /// `NATS_URL` accept).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// All members' addresses, for `async_nats::connect` (which does not split a
    /// comma-separated string itself).
    pub fn addrs(&self) -> Vec<async_nats::ServerAddr> {
        self.servers
            .iter()
            .map(|s| s.url().parse().expect("a member URL parses"))
            .collect()
    }

    /// Member `i` (stop, restart, url, pid, …).
    pub fn server(&self, i: usize) -> &NatsServer {
        &self.servers[i]
    }

    /// All members.
    pub fn servers(&self) -> &[NatsServer] {
        &self.servers
    }

    /// Wait (bounded by `timeout`) until JetStream on the running members answers an
    /// account-info request, that is, until the cluster has elected a meta leader.
    pub async fn wait_for_jetstream(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let running: Vec<async_nats::ServerAddr> = self
            .servers
            .iter()
            .filter(|s| s.is_running())
            .map(|s| s.url().parse().expect("a member URL parses"))
            .collect();
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if let Ok(client) = async_nats::connect(running.as_slice()).await {
                let js = async_nats::jetstream::new(client);
                // "stream not found" comes from a working meta leader; without one the
                // request fails or times out. (Account info is no probe: async-nats cannot
                // parse nats-server 2.9's reply, see `narun_wire::jetstream`.)
                use async_nats::jetstream::ErrorCode;
                use async_nats::jetstream::context::GetStreamErrorKind;
                let probe = js.get_stream("narun_cluster_probe");
                match tokio::time::timeout(Duration::from_secs(2), probe).await {
                    Ok(Err(e))
                        if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                            if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
                    {
                        return;
                    }
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "the probe request timed out".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the NATS cluster's JetStream did not answer within {timeout:?}: {last}");
    }
}
