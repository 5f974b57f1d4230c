//! The NATS JetStream adapter against its port's contract suite, and what only a real server
//! shows: restarts, processes racing to create the streams, dedup across processes, dead letters
//! of deliveries never settled, payload limits. One nats-server (a child process on free ports)
//! per test.

mod contract {
    use imgfleet_tests::nats_server::NatsFixture;
    imgfleet_tests::work_queue_contract!(NatsFixture::new());
}

mod adapter {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use imgfleet_fleet::{NatsQueue, NatsQueueConfig};
    use imgfleet_core::names::Stream;
    use imgfleet_core::ports::{QueueError, Settle, WorkQueue};
    use imgfleet_tests::nats_server::{NatsFixture, NatsServer, ACK_WAIT, MAX_DELIVER};

    const S: Stream = Stream::Files;

    /// Retries `publish` until the server takes it (after a restart, the client reconnects).
    async fn publish_eventually(q: &NatsQueue, id: &str, payload: &[u8]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match q.publish(S, id, payload.to_vec()).await {
                Ok(ack) => return ack.duplicate,
                Err(e) => {
                    assert!(Instant::now() < deadline, "publish still failing 30 s after the restart: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_survive_a_server_restart() {
        let mut f = NatsFixture::new();
        let q = f.connect().await;
        for i in 0..3 {
            q.publish(S, &format!("m{i}"), format!("payload {i}").into_bytes()).await.unwrap();
        }
        // One delivered and not settled when the server goes down: it comes back too.
        let held = q.fetch(S, 1, Duration::from_secs(1)).await.unwrap();
        assert_eq!(held.len(), 1);
        tokio::task::block_in_place(|| f.server.restart());
        drop(held);

        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < 3 && Instant::now() < deadline {
            match q.fetch(S, 10, Duration::from_secs(1)).await {
                Ok(batch) => {
                    for d in batch {
                        got.push((d.message_id.clone(), d.payload.clone()));
                        d.ack().await.unwrap();
                    }
                }
                Err(e) => {
                    assert!(matches!(e, QueueError::Unavailable(_)), "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        got.sort();
        let ids: Vec<_> = got.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["m0", "m1", "m2"], "every message survives the restart");
        assert_eq!(got[1].1, b"payload 1");
        // The dedup window survives too.
        assert!(q.publish(S, "m0", b"again".to_vec()).await.unwrap().duplicate);
        let depth = q.depth(S).await.unwrap();
        assert_eq!((depth.pending, depth.in_flight), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_while_the_server_is_down_fails_then_recovers() {
        let mut f = NatsFixture::new();
        let q = f.connect().await;
        tokio::task::block_in_place(|| f.server.stop());

        let start = Instant::now();
        let err = q.publish(S, "during", b"x".to_vec()).await.unwrap_err();
        assert!(matches!(err, QueueError::Unavailable(_)), "{err}");
        let bound = f.config().request_timeout + Duration::from_secs(2);
        assert!(start.elapsed() < bound, "publish took {:?} to fail", start.elapsed());
        let start = Instant::now();
        assert!(q.fetch(S, 5, Duration::from_millis(300)).await.is_err(), "fetch reports the outage");
        assert!(start.elapsed() < bound, "fetch took {:?} to fail", start.elapsed());
        assert!(q.depth(S).await.is_err());

        tokio::task::block_in_place(|| f.server.resume());
        // The failed publish may still have reached the server (the client sends what it
        // buffered once reconnected): a retry with the same id is then a duplicate, never a copy.
        publish_eventually(&q, "during", b"x").await;
        let got = q.fetch(S, 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message_id, "during");
        for d in got {
            d.ack().await.unwrap();
        }
        assert!(q.fetch(S, 10, Duration::from_millis(300)).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_racing_to_create_the_streams_all_succeed() {
        let f = NatsFixture::new();
        let config = f.config();
        let opened = futures_join_all((0..4).map(|_| NatsQueue::connect(config.clone()))).await;
        let queues: Vec<NatsQueue> = opened.into_iter().map(|r| r.expect("every racing process connects")).collect();
        // A later process with other settings updates the consumers in place.
        let updated = NatsQueue::connect(NatsQueueConfig { max_ack_pending: 64, ..config.clone() }).await.unwrap();
        queues[0].publish(S, "a", b"1".to_vec()).await.unwrap();
        let got = queues[3].fetch(S, 5, Duration::from_secs(2)).await.unwrap();
        assert_eq!(got.len(), 1, "one stream and one consumer, whoever created them");
        for d in got {
            d.ack().await.unwrap();
        }
        assert_eq!(updated.depth(S).await.unwrap().pending, 0);
    }

    /// `join_all` without the futures crate: spawn each, await them in order.
    async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_message_id_from_two_processes_is_a_duplicate() {
        let f = NatsFixture::new();
        let (a, b) = (f.connect().await, f.connect().await);
        assert!(!a.publish(S, "sha-1", b"first".to_vec()).await.unwrap().duplicate);
        assert!(b.publish(S, "sha-1", b"second".to_vec()).await.unwrap().duplicate);
        assert!(a.publish(S, "sha-1", b"third".to_vec()).await.unwrap().duplicate);
        let got = b.fetch(S, 10, Duration::from_millis(300)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, b"first");
        for d in got {
            d.ack().await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_never_settled_is_dead_lettered_after_max_deliver() {
        let f = NatsFixture::new();
        let q = f.connect().await;
        q.publish(S, "crashes-workers", b"x".to_vec()).await.unwrap();
        q.publish(S, "fine", b"y".to_vec()).await.unwrap();
        let mut deliveries = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut dead = Vec::new();
        while dead.is_empty() {
            assert!(Instant::now() < deadline, "no dead letter; deliveries {deliveries:?}");
            for d in q.fetch(S, 5, ACK_WAIT * 2).await.unwrap() {
                if d.message_id == "fine" {
                    d.ack().await.unwrap();
                } else {
                    deliveries.push(d.deliveries);
                    drop(d); // the worker dies holding it
                }
            }
            dead = q.dead_letters(S, 10).await.unwrap();
        }
        let expected: Vec<u32> = (1..=MAX_DELIVER).collect();
        assert_eq!(deliveries, expected);
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].message_id.as_str(), dead[0].deliveries), ("crashes-workers", MAX_DELIVER));
        assert!(dead[0].reason.contains("not settled"), "{}", dead[0].reason);
        assert!(q.fetch(S, 5, ACK_WAIT * 2).await.unwrap().is_empty());
        // Removed from the work stream: nothing waits, nothing is in flight.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let depth = q.depth(S).await.unwrap();
            if (depth.pending, depth.in_flight) == (0, 0) {
                break;
            }
            assert!(Instant::now() < deadline, "depth stays {depth:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_letters_are_per_stream_newest_first_and_limited() {
        let f = NatsFixture::new();
        let q = f.connect().await;
        for i in 0..30 {
            q.publish(S, &format!("bad{i}"), b"?".to_vec()).await.unwrap();
        }
        q.publish(Stream::Encoded, "other", b"?".to_vec()).await.unwrap();
        let mut left = 30;
        while left > 0 {
            for d in q.fetch(S, 7, Duration::from_secs(1)).await.unwrap() {
                let reason = format!("bad image {}", d.message_id);
                d.settle(Settle::Terminate(reason)).await.unwrap();
                left -= 1;
            }
        }
        for d in q.fetch(Stream::Encoded, 1, Duration::from_secs(1)).await.unwrap() {
            d.settle(Settle::Terminate("bad result".into())).await.unwrap();
        }
        let dead = q.dead_letters(S, 5).await.unwrap();
        let ids: Vec<_> = dead.iter().map(|d| d.message_id.as_str()).collect();
        assert_eq!(ids, ["bad29", "bad28", "bad27", "bad26", "bad25"]);
        assert_eq!(dead[0].reason, "bad image bad29");
        assert!(dead.iter().all(|d| d.stream == S && d.deliveries == 1));
        assert_eq!(q.dead_letters(S, 100).await.unwrap().len(), 30);
        let other = q.dead_letters(Stream::Encoded, 100).await.unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!((other[0].message_id.as_str(), other[0].stream), ("other", Stream::Encoded));
        assert!(q.dead_letters(Stream::Scan, 10).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn payloads_up_to_max_payload_pass_larger_ones_are_refused() {
        let f = NatsFixture::new();
        let q = f.connect().await;
        let big: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        q.publish(Stream::Prepared, "big", big.clone()).await.unwrap();
        let got = q.fetch(Stream::Prepared, 1, Duration::from_secs(2)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].payload == big, "payload intact");
        for d in got {
            d.ack().await.unwrap();
        }
        let err = q.publish(Stream::Prepared, "too-big", vec![0; 5 * 1024 * 1024]).await.unwrap_err();
        assert!(matches!(err, QueueError::Internal(_)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_ack_pending_bounds_what_is_in_flight() {
        let f = NatsFixture::new();
        let config = NatsQueueConfig { max_ack_pending: 2, ack_wait: Duration::from_secs(10), ..f.config() };
        let q = NatsQueue::connect(config).await.unwrap();
        for i in 0..3 {
            q.publish(S, &format!("m{i}"), vec![i]).await.unwrap();
        }
        let first = q.fetch(S, 5, Duration::from_millis(300)).await.unwrap();
        let seen: Vec<_> = first.iter().map(|d| (d.message_id.clone(), d.deliveries)).collect();
        assert_eq!(first.len(), 2, "no more than max_ack_pending in flight: {seen:?}");
        let start = Instant::now();
        assert!(q.fetch(S, 5, Duration::from_millis(300)).await.unwrap().is_empty(), "full: an empty fetch, not an error");
        assert!(start.elapsed() >= Duration::from_millis(250));
        let waiting = {
            let q = Arc::new(q);
            let waiter = Arc::clone(&q);
            (q, tokio::spawn(async move { waiter.fetch(S, 5, Duration::from_secs(5)).await.unwrap() }))
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut first = first.into_iter();
        first.next().unwrap().ack().await.unwrap();
        let third = waiting.1.await.unwrap();
        assert_eq!(third.iter().map(|d| d.message_id.as_str()).collect::<Vec<_>>(), ["m2"], "a freed slot is filled at once");
        for d in third.into_iter().chain(first) {
            d.ack().await.unwrap();
        }
        let depth = waiting.0.depth(S).await.unwrap();
        assert_eq!((depth.pending, depth.in_flight), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_server_after_a_wipe_gets_its_streams_back() {
        // A server that lost its store (a new volume): the adapter creates the stream again.
        let mut first = NatsServer::start();
        let config = NatsQueueConfig { request_timeout: Duration::from_secs(3), ..NatsQueueConfig::new(first.url()) };
        let q = Arc::new(NatsQueue::connect(config).await.unwrap());
        tokio::task::block_in_place(|| {
            first.stop();
            std::fs::remove_dir_all(first.store_dir()).unwrap();
            first.resume();
        });
        publish_eventually(&q, "after-wipe", b"x").await;
        let got = q.fetch(S, 1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1);
        for d in got {
            d.ack().await.unwrap();
        }
    }
}

/// A long job keeps its delivery with `in_progress`; the encoder port over request/reply.
mod keepalive_and_rpc {
    use std::sync::Arc;
    use std::time::Duration;

    use imgfleet_fleet::NatsEncoder;
    use imgfleet_fleet::nats_encoder::serve_encoder;
    use imgfleet_core::domain::RgbImage;
    use imgfleet_core::names::Stream;
    use imgfleet_core::ports::{Encoder, EncoderError, WorkQueue};
    use imgfleet_tests::harness::fixture_models;
    use imgfleet_tests::nats_server::{ACK_WAIT, NatsFixture};
    use imgfleet_worker_gpu::runtime::{RuntimeOptions, TchEncoder};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_kept_in_progress_is_not_delivered_again() {
        let f = NatsFixture::new();
        let q = f.connect().await;
        q.publish(Stream::Scan, "long", b"walk a big tree".to_vec()).await.unwrap();
        let mut held = q.fetch(Stream::Scan, 1, Duration::from_secs(1)).await.unwrap();
        let delivery = held.pop().unwrap();
        // Three ack waits pass, with a progress note every half of one.
        for _ in 0..6 {
            tokio::time::sleep(ACK_WAIT / 2).await;
            delivery.in_progress().await.unwrap();
        }
        assert!(q.fetch(Stream::Scan, 1, Duration::from_millis(200)).await.unwrap().is_empty(), "redelivered while in progress");
        delivery.ack().await.unwrap();
        // Without progress notes it does come back (the control).
        q.publish(Stream::Scan, "short", b"x".to_vec()).await.unwrap();
        let first = q.fetch(Stream::Scan, 1, Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.len(), 1);
        tokio::time::sleep(ACK_WAIT + Duration::from_millis(500)).await;
        let again = q.fetch(Stream::Scan, 1, Duration::from_secs(2)).await.unwrap();
        assert_eq!(again.len(), 1, "not redelivered after the ack wait");
        assert_eq!(again[0].deliveries, 2);
        drop(first);
        for d in again {
            d.ack().await.unwrap();
        }
    }

    fn picture(width: u32, height: u32, seed: u8) -> RgbImage {
        let data = (0..width * height * 3).map(|i| ((i as u64 * 31 + u64::from(seed) * 7) % 256) as u8).collect();
        RgbImage { width, height, data }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn search_requests_reach_a_worker_and_get_its_answers() {
        let f = NatsFixture::new();
        let q = f.connect().await;
        let options = RuntimeOptions {
            clip_model: fixture_models().join("clip-tiny-a").display().to_string(),
            blip_model: None,
            device: tch::Device::Cpu,
            dtype: imgfleet_worker_gpu::precision::Dtype::Auto,
            max_batch: 4,
            max_waiting: 8,
            caption_sub_batch: 0,
            search_first: true,
        };
        let tch = Arc::new(tokio::task::spawn_blocking(move || TchEncoder::start(options)).await.unwrap().unwrap());
        let caps = tch.capabilities();
        let remote = NatsEncoder::new(q.client(), Duration::from_secs(5), caps.clone());

        // Nobody listens yet: unavailable at once, with a message that says what to start.
        let started = std::time::Instant::now();
        let error = remote.embed_texts(vec!["a cat".into()]).await.unwrap_err();
        assert!(matches!(&error, EncoderError::Unavailable(m) if m.contains("no encoder worker is running")), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2), "no-responders is answered at once");

        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let worker: Arc<dyn Encoder> = tch.clone();
        let responder = tokio::spawn(serve_encoder(q.client(), worker, stop));
        tokio::time::sleep(Duration::from_millis(200)).await;

        let texts = vec!["a cat".to_owned(), "two dogs on a beach".to_owned()];
        assert_eq!(remote.embed_texts(texts.clone()).await.unwrap(), tch.embed_texts(texts).await.unwrap());
        let images = vec![picture(64, 48, 1), picture(30, 90, 2)];
        let over_nats = remote.embed_images(images.clone()).await.unwrap();
        // One request per image: compared with the encoder on each image alone (a batch of two
        // rounds differently).
        let mut direct = Vec::new();
        for image in images {
            direct.extend(tch.embed_images(vec![image]).await.unwrap());
        }
        assert_eq!(over_nats, direct, "small images travel unchanged");
        assert_eq!(remote.refresh_capabilities().await.unwrap(), caps);
        let error = remote.embed_texts(Vec::new()).await.unwrap_err();
        assert!(matches!(error, EncoderError::Invalid(_)), "{error}");

        // An image too large for max_payload is downscaled on the way and still embedded.
        let big = picture(1600, 1200, 3);
        let embedded = remote.embed_images(vec![big.clone()]).await.unwrap().remove(0);
        let direct = tch.embed_images(vec![big]).await.unwrap().remove(0);
        let cosine: f32 = embedded.iter().zip(&direct).map(|(a, b)| a * b).sum();
        assert!(cosine > 0.99, "downscaled image embedding drifts: cosine {cosine}");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), responder).await.expect("the responder stops").unwrap().unwrap();
        assert!(matches!(remote.embed_texts(vec!["x".into()]).await, Err(EncoderError::Unavailable(_))));
    }
}

/// A file whose workers keep dying on it is dead-lettered and, through the given-up hook,
/// counted as failed: its job completes instead of waiting forever.
mod given_up {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use imgfleet_embedded::FileStateStore;
    use imgfleet_core::domain::{JobRecord, JobStatus};
    use imgfleet_core::messages::{self, FileTask};
    use imgfleet_core::names::Stream;
    use imgfleet_core::ports::{StateStore, WorkQueue};
    use imgfleet_tests::nats_server::{ACK_WAIT, NatsFixture};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_that_kills_its_workers_fails_with_a_reason_and_the_job_completes() {
        let f = NatsFixture::new();
        let q = f.connect().await;
        let dir = tempfile::tempdir().unwrap();
        let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(dir.path()).unwrap());
        imgfleet_fleet::connect::account_given_up(&q, state.clone());

        let job = JobRecord::new("job-poison".into(), "images".into(), "/photos".into());
        state.create_job(&job).await.unwrap();
        state.set_job_status("job-poison", JobStatus::Running, None).await.unwrap();
        state.record_discovered("job-poison", "/photos/poison.jpg").await.unwrap();
        state.mark_scan_complete("job-poison").await.unwrap();
        let task = FileTask::new("job-poison".into(), "images".into(), "/photos/poison.jpg".into());
        q.publish(Stream::Files, "file:poison", messages::encode(&task)).await.unwrap();

        // Every worker that takes it dies holding it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let record = state.job("job-poison").await.unwrap().unwrap();
            if record.status.is_final() {
                assert_eq!(record.status, JobStatus::Completed, "{record:?}");
                assert_eq!((record.counts.discovered, record.counts.failed), (1, 1), "{record:?}");
                let line = record.logs.iter().find(|l| l.contains("poison.jpg")).expect("the failure is logged");
                assert!(line.contains("dead-lettered"), "{line}");
                break;
            }
            assert!(Instant::now() < deadline, "the job never completed: {record:?}");
            for delivery in q.fetch(Stream::Files, 1, ACK_WAIT * 2).await.unwrap() {
                drop(delivery);
            }
        }
        assert_eq!(q.dead_letters(Stream::Files, 10).await.unwrap().len(), 1);
    }
}
