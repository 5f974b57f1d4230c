//! The model thread's input: two bounded lanes, search requests and ingest batches. The
//! thread always takes a waiting search request first, and between the sub-batches of an
//! ingest job it serves the search requests that arrived meanwhile, so a search waits for at
//! most one sub-batch, never a whole caption batch.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

/// Who a job is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Search requests (text or image embeddings for a query): first in line.
    Search,
    /// The encoder stage's batches: served when no search waits.
    Ingest,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Full,
    Closed,
}

struct State<J> {
    search: VecDeque<J>,
    ingest: VecDeque<J>,
    closed: bool,
}

/// Two bounded FIFO lanes feeding one consumer thread.
pub struct Lanes<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
    capacity: usize,
}

impl<J> Lanes<J> {
    /// Each lane holds at most `capacity` jobs.
    pub fn new(capacity: usize) -> Self {
        let state = State { search: VecDeque::new(), ingest: VecDeque::new(), closed: false };
        Self { state: Mutex::new(state), ready: Condvar::new(), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` on `lane`, or says why not (the job is dropped, and with it its reply).
    pub fn push(&self, lane: Lane, job: J) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        let queue = match lane {
            Lane::Search => &mut state.search,
            Lane::Ingest => &mut state.ingest,
        };
        if queue.len() >= self.capacity {
            return Err(Refused::Full);
        }
        queue.push_back(job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, search first; blocks while both lanes are empty. `None` once closed and
    /// drained.
    pub fn next(&self) -> Option<(Lane, J)> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.search.pop_front() {
                return Some((Lane::Search, job));
            }
            if let Some(job) = state.ingest.pop_front() {
                return Some((Lane::Ingest, job));
            }
            if state.closed {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A waiting search request, without blocking.
    pub fn next_search(&self) -> Option<J> {
        self.lock().search.pop_front()
    }

    /// No more jobs are taken; the consumer gets those queued, then `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn search_goes_first_and_each_lane_is_bounded() {
        let lanes = Lanes::new(2);
        lanes.push(Lane::Ingest, "batch 1").unwrap();
        lanes.push(Lane::Ingest, "batch 2").unwrap();
        assert_eq!(lanes.push(Lane::Ingest, "batch 3"), Err(Refused::Full));
        lanes.push(Lane::Search, "query 1").unwrap();
        lanes.push(Lane::Search, "query 2").unwrap();
        assert_eq!(lanes.next(), Some((Lane::Search, "query 1")));
        assert_eq!(lanes.next_search(), Some("query 2"));
        assert_eq!(lanes.next_search(), None);
        assert_eq!(lanes.next(), Some((Lane::Ingest, "batch 1")));
        lanes.close();
        assert_eq!(lanes.push(Lane::Search, "late"), Err(Refused::Closed));
        assert_eq!(lanes.next(), Some((Lane::Ingest, "batch 2")), "what was queued is still served");
        assert_eq!(lanes.next(), None);
    }

    #[test]
    fn a_waiting_consumer_wakes_for_a_job_and_for_close() {
        let lanes = Arc::new(Lanes::new(4));
        let consumer = {
            let lanes = lanes.clone();
            std::thread::spawn(move || (lanes.next(), lanes.next()))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        lanes.push(Lane::Search, 7).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        lanes.close();
        assert_eq!(consumer.join().unwrap(), (Some((Lane::Search, 7)), None));
    }
}
