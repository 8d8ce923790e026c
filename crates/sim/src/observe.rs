//! What the checker sees of the simulated processes: each metadata node's applied state and
//! Raft metrics, each storage server's blob store, the leaders of every term, and a digest of
//! events (two runs of one seed must end with the same digest).

use crate::meta::SmState;
use openraft::{RaftMetrics, ServerState};
use shoal_blob_store::{BlobStore, MemDisk};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A leading node: its id, applied state and metrics.
pub type LeaderView = (
    u64,
    Arc<Mutex<SmState>>,
    RaftMetrics<u64, openraft::BasicNode>,
);

pub type Metrics = watch::Receiver<RaftMetrics<u64, openraft::BasicNode>>;

#[derive(Default)]
pub struct Seen {
    pub metas: BTreeMap<u64, (Arc<Mutex<SmState>>, Metrics)>,
    pub stores: BTreeMap<u64, Arc<BlobStore<MemDisk>>>,
    /// term -> the node that was leader in it.
    pub leaders: BTreeMap<u64, u64>,
    pub violations: Vec<String>,
    /// Ticks and workloads stop, so that the replicas can be compared.
    pub quiet: bool,
    digest: u32,
}

#[derive(Clone, Default)]
pub struct Observer(pub Arc<Mutex<Seen>>);

impl Observer {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().expect("observer lock")
    }

    pub fn quiet(&self) -> bool {
        self.lock().quiet
    }

    pub fn violation(&self, what: String) {
        self.lock().violations.push(what);
    }

    pub fn event(&self, what: &str) {
        let mut s = self.lock();
        s.digest = crc32c::crc32c_append(s.digest, what.as_bytes());
    }

    pub fn digest(&self) -> u32 {
        self.lock().digest
    }

    /// Record a started node and watch its metrics for leaders: two leaders that committed in
    /// one term is a violation.
    pub fn meta_started(&self, id: u64, state: Arc<Mutex<SmState>>, mut metrics: Metrics) {
        self.lock().metas.insert(id, (state, metrics.clone()));
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                // openraft's leader ids are (term, node): two candidates may both win votes in
                // one term, but only the later can commit. A leader counts once it applied an
                // entry of its own leadership, which a majority accepted.
                let (term, leader) = {
                    let m = metrics.borrow_and_update();
                    let own = m.last_applied.is_some_and(|l| {
                        l.leader_id.term == m.current_term && l.leader_id.node_id == id
                    });
                    (m.current_term, m.state == ServerState::Leader && own)
                };
                if leader {
                    let mut s = me.lock();
                    match s.leaders.get(&term) {
                        Some(&other) if other != id => {
                            let v =
                                format!("two leaders in term {term}: meta-{other} and meta-{id}");
                            s.violations.push(v);
                        }
                        Some(_) => {}
                        None => {
                            s.leaders.insert(term, id);
                            s.digest = crc32c::crc32c_append(
                                s.digest,
                                format!("leader {id} term {term}").as_bytes(),
                            );
                        }
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    pub fn store_started(&self, id: u64, store: Arc<BlobStore<MemDisk>>) {
        self.lock().stores.insert(id, store);
    }

    /// The applied state of the node that currently leads, with its metrics: of the nodes that
    /// think they lead, the one of the highest term (a leader cut off from the others goes on
    /// thinking so until it hears of a later term).
    pub fn leader(&self) -> Option<LeaderView> {
        let s = self.lock();
        s.metas
            .iter()
            .map(|(id, (state, m))| (*id, state.clone(), m.borrow().clone()))
            .filter(|(_, _, m)| m.state == ServerState::Leader)
            .max_by_key(|(_, _, m)| m.current_term)
    }
}
