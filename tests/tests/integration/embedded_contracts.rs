//! The embedded adapters against their ports' contract suites.

mod edge_vector_store {
    use imgfleet_tests::embedded::EdgeFixture;
    imgfleet_tests::vector_store_contract!(EdgeFixture::new());
}

mod file_state_store {
    use imgfleet_tests::embedded::FileStateFixture;
    imgfleet_tests::state_store_contract!(FileStateFixture::new());
}

mod memory_queue {
    use imgfleet_tests::embedded::MemoryQueueFixture;
    imgfleet_tests::work_queue_contract!(MemoryQueueFixture);
}

/// In one process too, a file whose deliveries are never settled is given up on after
/// `max_deliver` deliveries and, through the hook, counted as failed: its job completes.
mod given_up {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use imgfleet_embedded::{FileStateStore, MemoryQueue, MemoryQueueConfig};
    use imgfleet_core::domain::{JobRecord, JobStatus};
    use imgfleet_core::messages::{self, FileTask};
    use imgfleet_core::names::Stream;
    use imgfleet_core::ports::{StateStore, WorkQueue};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_never_settled_fails_with_a_reason_and_the_job_completes() {
        let dir = tempfile::tempdir().unwrap();
        let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(dir.path()).unwrap());
        let ack_wait = Duration::from_millis(100);
        let q = MemoryQueue::new(MemoryQueueConfig { ack_wait, max_deliver: 3, ..MemoryQueueConfig::default() });
        q.on_given_up(imgfleet_core::job_status::given_up_hook(state.clone()));

        state.create_job(&JobRecord::new("job-poison".into(), "images".into(), "/photos".into())).await.unwrap();
        state.set_job_status("job-poison", JobStatus::Running, None).await.unwrap();
        state.record_discovered("job-poison", "/photos/poison.jpg").await.unwrap();
        state.mark_scan_complete("job-poison").await.unwrap();
        let task = FileTask::new("job-poison".into(), "images".into(), "/photos/poison.jpg".into());
        q.publish(Stream::Files, "file:poison", messages::encode(&task)).await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let record = state.job("job-poison").await.unwrap().unwrap();
            if record.status.is_final() {
                assert_eq!(record.status, JobStatus::Completed, "{record:?}");
                assert_eq!((record.counts.discovered, record.counts.failed), (1, 1), "{record:?}");
                assert!(record.logs.iter().any(|l| l.contains("poison.jpg") && l.contains("dead-lettered")), "{:?}", record.logs);
                break;
            }
            assert!(Instant::now() < deadline, "the job never completed: {record:?}");
            for delivery in q.fetch(Stream::Files, 1, ack_wait * 2).await.unwrap() {
                drop(delivery);
            }
        }
        assert_eq!(q.dead_letters(Stream::Files, 10).await.unwrap().len(), 1);
    }
}
