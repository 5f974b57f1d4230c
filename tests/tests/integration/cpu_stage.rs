//! The CPU stage (scan → file tasks → prepared images) over the embedded queue and state store,
//! on a corpus generated here: every file accounted for, exact counts, duplicates, EXIF
//! orientation, symlinks, crash recovery of dedup claims, and closeness to `transformers`.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use imgfleet_core::domain::{ImagePayload, ItemOutcome, JobCounts, JobRecord, JobStatus, point_id_for};
use imgfleet_core::messages::{self, FileTask, IndexerInput, PreparedImage, ScanRequest};
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{StateStore, WorkQueue};
use imgfleet_core::stage::Stage as _;
use imgfleet_embedded::{FileStateStore, MemoryQueue, MemoryQueueConfig};
use imgfleet_imaging::FailureKind;
use imgfleet_imaging::hash::sha256_hex;
use imgfleet_worker_cpu::scan::file_task_id;
use imgfleet_worker_cpu::{CpuStageConfig, PrepareStage, ScanStage, SymlinkPolicy};
use tempfile::TempDir;

const COLLECTION: &str = "photos";

// ---------- corpus ----------

/// A photo-like picture: smooth gradients plus a pattern, so JPEG has real work.
fn photo(width: u32, height: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let fx = x as f32 / width as f32;
        let fy = y as f32 / height as f32;
        let wave = ((x as f32 * 0.07 + seed as f32).sin() * (y as f32 * 0.05).cos() * 40.0) as i32;
        Rgb([
            (fx * 200.0) as i32 + wave + 20,
            (fy * 180.0) as i32 - wave + 40,
            ((1.0 - fx) * 150.0 + seed as f32 * 10.0) as i32 + 30,
        ]
        .map(|v| v.clamp(0, 255) as u8))
    })
}

fn jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(image).unwrap();
    out
}

fn encoded(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image.clone()).write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Left half red, right half blue.
fn halves(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, _| if x < width / 2 { Rgb([230, 20, 20]) } else { Rgb([20, 20, 230]) })
}

enum TiffValue {
    Short(u16),
    Long(u32),
    Ascii(&'static str),
    Rationals(Vec<(u32, u32)>),
}

impl TiffValue {
    fn encode(&self) -> (u16, u32, Vec<u8>) {
        match self {
            Self::Short(v) => (3, 1, v.to_le_bytes().to_vec()),
            Self::Long(v) => (4, 1, v.to_le_bytes().to_vec()),
            Self::Ascii(s) => {
                let mut b = s.as_bytes().to_vec();
                b.push(0);
                (2, b.len() as u32, b)
            }
            Self::Rationals(rs) => {
                (5, rs.len() as u32, rs.iter().flat_map(|(n, d)| [n.to_le_bytes(), d.to_le_bytes()].concat()).collect())
            }
        }
    }
}

/// One little-endian IFD at `start`, its out-of-line values right after it.
fn ifd(start: u32, entries: &[(u16, TiffValue)]) -> Vec<u8> {
    let data_start = start + 2 + 12 * entries.len() as u32 + 4;
    let mut head = (entries.len() as u16).to_le_bytes().to_vec();
    let mut data = Vec::new();
    for (tag, value) in entries {
        let (kind, count, mut bytes) = value.encode();
        head.extend_from_slice(&tag.to_le_bytes());
        head.extend_from_slice(&kind.to_le_bytes());
        head.extend_from_slice(&count.to_le_bytes());
        if bytes.len() <= 4 {
            bytes.resize(4, 0);
            head.extend_from_slice(&bytes);
        } else {
            head.extend_from_slice(&(data_start + data.len() as u32).to_le_bytes());
            data.extend_from_slice(&bytes);
            if data.len() % 2 == 1 {
                data.push(0);
            }
        }
    }
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&data);
    head
}

/// A JPEG with an EXIF block: orientation, camera, capture time and a GPS position.
fn jpeg_with_exif(image: &RgbImage, orientation: u16) -> Vec<u8> {
    let exif_entries = || vec![(0x9003, TiffValue::Ascii("2021:07:04 12:30:05"))];
    let gps_entries = || {
        vec![
            (1, TiffValue::Ascii("N")),
            (2, TiffValue::Rationals(vec![(48, 1), (51, 1), (2950, 100)])),
            (3, TiffValue::Ascii("E")),
            (4, TiffValue::Rationals(vec![(2, 1), (17, 1), (4000, 100)])),
        ]
    };
    let ifd0 = |exif_at: u32, gps_at: u32| {
        vec![
            (0x010F, TiffValue::Ascii("TestCam")),
            (0x0110, TiffValue::Ascii("Model X")),
            (0x0112, TiffValue::Short(orientation)),
            (0x8769, TiffValue::Long(exif_at)),
            (0x8825, TiffValue::Long(gps_at)),
        ]
    };
    let size0 = ifd(8, &ifd0(0, 0)).len() as u32;
    let exif_at = 8 + size0;
    let exif_ifd = ifd(exif_at, &exif_entries());
    let gps_at = exif_at + exif_ifd.len() as u32;
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend(ifd(8, &ifd0(exif_at, gps_at)));
    tiff.extend(exif_ifd);
    tiff.extend(ifd(gps_at, &gps_entries()));
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend(tiff);
    let plain = jpeg(image, 92);
    [&plain[..2], &app1[..], &plain[2..]].concat()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A small PNG whose header declares `side`×`side` pixels (a decompression bomb's header).
fn png_bomb(side: u32) -> Vec<u8> {
    let mut png = encoded(&photo(8, 8, 1), ImageFormat::Png);
    png[16..20].copy_from_slice(&side.to_be_bytes());
    png[20..24].copy_from_slice(&side.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A JPEG whose frame header declares `side`×`side` pixels.
fn jpeg_bomb(side: u16) -> Vec<u8> {
    let mut data = jpeg(&photo(16, 16, 2), 90);
    let sof = data.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline frame header");
    data[sof + 5..sof + 7].copy_from_slice(&side.to_be_bytes());
    data[sof + 7..sof + 9].copy_from_slice(&side.to_be_bytes());
    data
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// One of a group of identical files: exactly one of the group is processed, the rest
    /// are duplicates.
    Copy(&'static str),
    Processed,
    Failed(FailureKind),
}

struct Corpus {
    _dir: TempDir,
    root: PathBuf,
    files: Vec<(PathBuf, Expect)>,
    /// Paths that must never become tasks (not images, or behind refused symlinks).
    not_candidates: Vec<PathBuf>,
    /// Applied after the scan and before the CPU stage runs.
    vanish: PathBuf,
    replace_with_dir: PathBuf,
    /// `Some` when chmod 000 stops reads here (not root).
    locked: Option<PathBuf>,
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
    path.to_owned()
}

fn build_corpus() -> Corpus {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let root = base.join("root");
    let outside = base.join("outside");
    fs::create_dir_all(&root).unwrap();
    let mut files = Vec::new();
    let mut add = |rel: &str, bytes: &[u8], expect: Expect| files.push((write(&root.join(rel), bytes), expect));

    // Exact duplicates: the same bytes under different names and folders.
    let original = photo(640, 480, 1);
    let original_q90 = jpeg(&original, 90);
    add("a/photo1.jpg", &original_q90, Expect::Copy("photo1"));
    add("b/c/copy of photo1.jpeg", &original_q90, Expect::Copy("photo1"));
    add("b/photo1_again.JPG", &original_q90, Expect::Copy("photo1"));
    // Near-duplicates: the same picture re-encoded, so different bytes: each is its own image.
    add("a/photo1_q70.jpg", &jpeg(&original, 70), Expect::Processed);
    add("a/photo1.png", &encoded(&original, ImageFormat::Png), Expect::Processed);
    // One of each format; the WebP, GIF and PNG with a second copy elsewhere.
    let other = photo(300, 200, 2);
    add("formats/other.webp", &encoded(&other, ImageFormat::WebP), Expect::Copy("webp"));
    add("formats/deeper/still/deeper/other-copy.webp", &encoded(&other, ImageFormat::WebP), Expect::Copy("webp"));
    add("formats/other.gif", &encoded(&other, ImageFormat::Gif), Expect::Processed);
    add("formats/other.bmp", &encoded(&other, ImageFormat::Bmp), Expect::Processed);
    add("formats/other.tiff", &encoded(&other, ImageFormat::Tiff), Expect::Processed);
    add("formats/big.jpg", &jpeg(&photo(1600, 1200, 3), 90), Expect::Processed);
    // Found by content, not by name.
    add("b/c/d/IMG_0042", &encoded(&photo(120, 90, 4), ImageFormat::Png), Expect::Processed);
    // EXIF-rotated photos: stored landscape, shown portrait.
    add("exif/rotated_cw.jpg", &jpeg_with_exif(&halves(320, 160), 6), Expect::Processed);
    add("exif/rotated_ccw.jpg", &jpeg_with_exif(&halves(320, 160), 8), Expect::Processed);

    // Every failure kind.
    add("bad/empty.png", b"", Expect::Failed(FailureKind::Empty));
    let big_jpeg = jpeg(&photo(800, 600, 5), 90);
    add("bad/truncated.jpg", &big_jpeg[..big_jpeg.len() * 6 / 10], Expect::Failed(FailureKind::Truncated));
    let noisy_png = encoded(&photo(400, 300, 6), ImageFormat::Png);
    add("bad/truncated.png", &noisy_png[..noisy_png.len() / 2], Expect::Failed(FailureKind::Truncated));
    // Intact segments, impossible Huffman table: every code length count at its maximum.
    let mut corrupt_jpeg = big_jpeg.clone();
    let dht = corrupt_jpeg.windows(2).position(|w| w == [0xFF, 0xC4]).expect("a huffman table");
    corrupt_jpeg[dht + 5..dht + 21].fill(0xFF);
    add("bad/corrupt.jpg", &corrupt_jpeg, Expect::Failed(FailureKind::Corrupt));
    let mut corrupt_png = noisy_png.clone();
    let middle = corrupt_png.len() / 2;
    corrupt_png[middle..middle + 64].iter_mut().for_each(|b| *b ^= 0xA5);
    add("bad/corrupt.png", &corrupt_png, Expect::Failed(FailureKind::Corrupt));
    add("bad/photo.heic", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic and then some", Expect::Failed(FailureKind::Unsupported));
    add("bad/photo.avif", b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf and more", Expect::Failed(FailureKind::Unsupported));
    add("bad/bomb.png", &png_bomb(50_000), Expect::Failed(FailureKind::TooLarge));
    add("bad/bomb.jpg", &jpeg_bomb(60_000), Expect::Failed(FailureKind::TooLarge));
    add("bad/notes.jpg", b"these are my notes, not a photo\n", Expect::Failed(FailureKind::NotAnImage));
    let vanish = root.join("bad/vanished.jpg");
    add("bad/vanished.jpg", &jpeg(&photo(64, 64, 7), 90), Expect::Failed(FailureKind::Vanished));
    let replace_with_dir = root.join("bad/replaced-by-a-directory.jpg");
    add("bad/replaced-by-a-directory.jpg", &jpeg(&photo(64, 64, 8), 90), Expect::Failed(FailureKind::Unreadable));
    // Files over the size limit (2 MiB in these tests) are refused unread; sparse, so cheap.
    let huge = root.join("bad/huge.jpg");
    fs::File::create(&huge).unwrap().set_len(3 * 1024 * 1024).unwrap();
    files.push((huge, Expect::Failed(FailureKind::TooLarge)));

    // chmod 000 stops reads only without CAP_DAC_OVERRIDE: as root (as in CI containers) it
    // does not, and the unreadable case above (a directory in place of the file) covers it.
    let locked_path = write(&root.join("bad/locked.jpg"), &jpeg(&photo(64, 64, 9), 90));
    fs::set_permissions(&locked_path, fs::Permissions::from_mode(0o000)).unwrap();
    let locked = if fs::read(&locked_path).is_err() {
        files.push((locked_path.clone(), Expect::Failed(FailureKind::Unreadable)));
        Some(locked_path)
    } else {
        eprintln!("note: running with CAP_DAC_OVERRIDE (root): chmod 000 does not stop reads, so bad/locked.jpg is removed and the unreadable case is a directory in place of a file");
        fs::remove_file(&locked_path).unwrap();
        None
    };

    // Not candidates: other files, and everything behind symlinks the policy refuses.
    let mut not_candidates = vec![write(&root.join("notes.txt"), b"hello"), write(&root.join("b/data.bin"), &[7u8; 100])];
    not_candidates.push(write(&outside.join("secret.jpg"), &jpeg(&photo(64, 64, 10), 90)));
    symlink(&outside, root.join("escape")).unwrap();
    not_candidates.push(root.join("escape/secret.jpg"));
    symlink(outside.join("secret.jpg"), root.join("escape.jpg")).unwrap();
    not_candidates.push(root.join("escape.jpg"));
    symlink(base.join("missing.jpg"), root.join("dangling.jpg")).unwrap();
    not_candidates.push(root.join("dangling.jpg"));
    // Loops: to the root and to a parent.
    symlink(&root, root.join("b/loop-to-root")).unwrap();
    symlink("..", root.join("b/c/loop-to-parent")).unwrap();
    // A link inside the root is followed: its file is one more copy of photo1.
    symlink(root.join("a/photo1.jpg"), root.join("link-to-photo1.jpg")).unwrap();
    files.push((root.join("link-to-photo1.jpg"), Expect::Copy("photo1")));
    // A directory link inside the root is followed too.
    symlink(root.join("formats/deeper"), root.join("deeper-link")).unwrap();
    files.push((root.join("deeper-link/still/deeper/other-copy.webp"), Expect::Copy("webp")));

    Corpus { _dir: dir, root, files, not_candidates, vanish, replace_with_dir, locked }
}

/// The counts a job over `files` must end with.
fn expected_counts(files: &[(PathBuf, Expect)]) -> JobCounts {
    let groups: BTreeSet<&str> = files.iter().filter_map(|(_, e)| if let Expect::Copy(g) = e { Some(*g) } else { None }).collect();
    let copies = files.iter().filter(|(_, e)| matches!(e, Expect::Copy(_))).count() as u64;
    let processed = files.iter().filter(|(_, e)| *e == Expect::Processed).count() as u64 + groups.len() as u64;
    let failed = files.iter().filter(|(_, e)| matches!(e, Expect::Failed(_))).count() as u64;
    JobCounts { discovered: files.len() as u64, processed, duplicates: copies - groups.len() as u64, failed, ..JobCounts::default() }
}

// ---------- pipeline around the stage ----------

#[derive(Debug, Clone)]
struct StoredImage {
    payload: ImagePayload,
    upserts: u32,
    clip: Vec<u8>,
    blip: Vec<u8>,
}

/// The stages around the CPU stage, over the embedded adapters, and a stand-in for the
/// indexer (issue 6) that "stores" prepared images in a map and marks their dedup entry done.
struct Pipeline {
    _state_dir: TempDir,
    queue: Arc<MemoryQueue>,
    state: Arc<dyn StateStore>,
    scanner: ScanStage,
    cpu: PrepareStage,
    stored: HashMap<String, StoredImage>,
}

fn test_config(owner: &str) -> CpuStageConfig {
    CpuStageConfig {
        concurrency: 2,
        batch: 8,
        max_file_bytes: 2 * 1024 * 1024,
        held_retry_ms: 50,
        // With the queue's max_deliver of 3: a copy waiting for its twin is re-published
        // rather than dead-lettered.
        held_retries: 2,
        retry_base_ms: 50,
        worker_id: Some(owner.to_owned()),
        ..CpuStageConfig::default()
    }
}

impl Pipeline {
    /// `ack_wait`: when an unsettled delivery comes back.
    fn new(config: CpuStageConfig, ack_wait: Duration) -> Self {
        let state_dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(MemoryQueue::new(MemoryQueueConfig {
            ack_wait,
            max_deliver: 3,
            ..MemoryQueueConfig::default()
        }));
        let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(state_dir.path()).unwrap());
        let scanner = ScanStage::new(queue.clone(), state.clone(), SymlinkPolicy::InsideRoot);
        let cpu = PrepareStage::new(queue.clone(), state.clone(), config).unwrap();
        Self { _state_dir: state_dir, queue, state, scanner, cpu, stored: HashMap::new() }
    }

    async fn submit(&self, job_id: &str, dir: &Path) {
        let job = JobRecord::new(job_id.into(), COLLECTION.into(), dir.display().to_string());
        self.state.create_job(&job).await.unwrap();
        let request = ScanRequest::new(job_id.into(), COLLECTION.into(), dir.display().to_string());
        self.queue.publish(Stream::Scan, job_id, messages::encode(&request)).await.unwrap();
    }

    async fn scan(&self) {
        assert_eq!(self.scanner.run_batch(Duration::from_secs(1)).await.unwrap(), 1);
    }

    /// The indexer stand-in: one pass over the prepared and encoded streams.
    async fn index(&mut self) -> usize {
        let mut handled = 0;
        for delivery in self.queue.fetch(Stream::Prepared, 64, Duration::from_millis(5)).await.unwrap() {
            let prepared: PreparedImage = messages::decode_prepared(&delivery.payload).unwrap();
            let sha = prepared.payload.sha256.clone();
            let point_id = point_id_for(&sha).to_string();
            let entry = self.stored.entry(point_id.clone()).or_insert_with(|| StoredImage {
                payload: prepared.payload.clone(),
                upserts: 0,
                clip: Vec::new(),
                blip: Vec::new(),
            });
            entry.upserts += 1;
            entry.clip = prepared.clip_pixels;
            entry.blip = prepared.blip_pixels;
            self.state.mark_done(&prepared.collection, &sha, &point_id, &prepared.claim_token).await.unwrap();
            self.state.record_outcome(&prepared.job_id, &prepared.payload.path, &ItemOutcome::Processed).await.unwrap();
            self.state.complete_if_done(&prepared.job_id).await.unwrap();
            delivery.ack().await.unwrap();
            handled += 1;
        }
        for delivery in self.queue.fetch(Stream::Encoded, 64, Duration::from_millis(5)).await.unwrap() {
            let note = match messages::decode_indexer_input(&delivery.payload).unwrap() {
                IndexerInput::DuplicatePath(note) => note,
                // The scan's last message: this stand-in has no source index to sweep.
                IndexerInput::Sweep(sweep) => {
                    self.state.mark_scan_complete(&sweep.job_id).await.unwrap();
                    self.state.complete_if_done(&sweep.job_id).await.unwrap();
                    delivery.ack().await.unwrap();
                    handled += 1;
                    continue;
                }
                IndexerInput::Encoded(_) => panic!("the cpu stage publishes only duplicate paths on the encoded stream"),
            };
            let stored = self.stored.get_mut(&note.point_id).expect("a duplicate of a stored image");
            assert_eq!(stored.payload.sha256, note.sha256);
            if !stored.payload.paths.contains(&note.duplicate_path) {
                stored.payload.paths.push(note.duplicate_path.clone());
            }
            let outcome = ItemOutcome::Duplicate { existing_id: note.point_id.clone() };
            self.state.record_outcome(&note.job_id, &note.duplicate_path, &outcome).await.unwrap();
            self.state.complete_if_done(&note.job_id).await.unwrap();
            delivery.ack().await.unwrap();
            handled += 1;
        }
        handled
    }

    /// Runs the CPU stage and the indexer stand-in until the job completes and every queue is
    /// empty.
    async fn finish(&mut self, job_id: &str) -> JobRecord {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let worked = self.cpu.run_batch(Duration::from_millis(5)).await.unwrap() + self.index().await;
            let job = self.state.job(job_id).await.unwrap().unwrap();
            let mut idle = worked == 0;
            for stream in Stream::ALL {
                let depth = self.queue.depth(stream).await.unwrap();
                idle &= depth.pending + depth.in_flight == 0;
            }
            if job.status == JobStatus::Completed && idle {
                return job;
            }
            assert!(Instant::now() < deadline, "job did not finish: {job:?}");
            if worked == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn failed_reason<'a>(job: &'a JobRecord, path: &Path) -> Option<&'a str> {
    let prefix = format!("failed: {}: ", path.display());
    job.logs.iter().find_map(|line| line.strip_prefix(&prefix))
}

fn mean_rgb(pixels: &[u8], side: usize, rows: std::ops::Range<usize>) -> [f64; 3] {
    let mut sum = [0f64; 3];
    let mut n = 0f64;
    for y in rows {
        for x in 0..side {
            let p = &pixels[(y * side + x) * 3..][..3];
            (0..3).for_each(|c| sum[c] += f64::from(p[c]));
            n += 1.0;
        }
    }
    sum.map(|s| s / n)
}

// ---------- tests ----------

#[tokio::test]
async fn every_file_is_processed_duplicate_or_failed_with_its_reason() {
    let corpus = build_corpus();
    let mut pipeline = Pipeline::new(test_config("cpu-test"), Duration::from_secs(30));
    pipeline.submit("job-1", &corpus.root).await;
    pipeline.scan().await;

    // The scan found exactly the candidates, each published once.
    let job = pipeline.state.job("job-1").await.unwrap().unwrap();
    let expected = expected_counts(&corpus.files);
    assert!(!job.scan_complete, "the indexer marks it, after its sweep");
    assert_eq!(pipeline.queue.depth(Stream::Encoded).await.unwrap().pending, 1, "the scan's last message: the sweep request");
    assert_eq!(job.counts.discovered, expected.discovered, "logs: {:#?}", job.logs);
    let tasks = pipeline.queue.fetch(Stream::Files, 1000, Duration::from_millis(50)).await.unwrap();
    let mut task_paths = BTreeSet::new();
    for delivery in tasks {
        let task: FileTask = messages::decode(&delivery.payload).unwrap();
        assert_eq!(delivery.message_id, file_task_id("job-1", &task.path));
        task_paths.insert(PathBuf::from(&task.path));
        // Back to the queue for the stage: a zero-delay retry.
        delivery.settle(imgfleet_core::ports::Settle::Retry(Duration::ZERO)).await.unwrap();
    }
    let expected_paths: BTreeSet<PathBuf> = corpus.files.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(task_paths, expected_paths);
    for path in &corpus.not_candidates {
        assert!(!task_paths.contains(path), "{} must not be a candidate", path.display());
    }
    // Loops and escapes are logged against the job.
    let skipped: Vec<&String> = job.logs.iter().filter(|l| l.starts_with("skipped: ")).collect();
    assert!(skipped.iter().any(|l| l.contains("loop-to-root") && l.contains("symlink loop")), "{skipped:#?}");
    assert!(skipped.iter().any(|l| l.contains("loop-to-parent") && l.contains("symlink loop")), "{skipped:#?}");
    assert!(skipped.iter().any(|l| l.contains("/escape:") && l.contains("outside")), "{skipped:#?}");
    assert!(skipped.iter().any(|l| l.contains("/escape.jpg:") && l.contains("outside")), "{skipped:#?}");

    // Between scan and read: one file disappears, one becomes a directory.
    fs::remove_file(&corpus.vanish).unwrap();
    fs::remove_file(&corpus.replace_with_dir).unwrap();
    fs::create_dir(&corpus.replace_with_dir).unwrap();

    let job = pipeline.finish("job-1").await;
    assert_eq!(job.counts, expected, "logs: {:#?}", job.logs);
    assert_eq!(job.counts.settled(), job.counts.discovered);

    // Each failure with its own kind of reason.
    for (path, expect) in &corpus.files {
        if let Expect::Failed(kind) = expect {
            let reason = failed_reason(&job, path).unwrap_or_else(|| panic!("no failure logged for {}", path.display()));
            assert_eq!(FailureKind::of_reason(reason), Some(*kind), "{}: {reason}", path.display());
        }
    }
    assert!(corpus.locked.is_none() || failed_reason(&job, corpus.locked.as_ref().unwrap()).is_some());

    // Stored once per distinct content; every copy's path reaches the stored payload.
    assert_eq!(pipeline.stored.len() as u64, expected.processed);
    assert!(pipeline.stored.values().all(|s| s.upserts == 1));
    for group in ["photo1", "webp"] {
        let paths: BTreeSet<String> = corpus
            .files
            .iter()
            .filter(|(_, e)| *e == Expect::Copy(group))
            .map(|(p, _)| p.display().to_string())
            .collect();
        let sha = sha256_hex(&fs::read(paths.first().unwrap()).unwrap());
        let stored = &pipeline.stored[&point_id_for(&sha).to_string()];
        let stored_paths: BTreeSet<String> = stored.payload.paths.iter().cloned().collect();
        assert_eq!(stored_paths, paths, "group {group}");
        assert!(paths.contains(&stored.payload.path));
    }
    // Duplicates name the stored point in the job log.
    assert_eq!(job.logs.iter().filter(|l| l.starts_with("duplicate: ")).count() as u64, expected.duplicates);

    // Payloads and pixel buffers.
    for stored in pipeline.stored.values() {
        assert_eq!(stored.clip.len(), 224 * 224 * 3);
        assert_eq!(stored.blip.len(), 384 * 384 * 3);
        assert_eq!(stored.payload.job_id.as_deref(), Some("job-1"));
        assert!(stored.payload.mtime.is_some());
        assert_eq!(stored.payload.bytes, fs::metadata(&stored.payload.path).unwrap().len());
    }
    let by_name = |name: &str| {
        pipeline.stored.values().find(|s| s.payload.filename == name).unwrap_or_else(|| panic!("{name} not stored"))
    };
    let big = by_name("big.jpg");
    assert_eq!((big.payload.width, big.payload.height, big.payload.format.as_str()), (1600, 1200, "jpeg"));
    assert_eq!(by_name("IMG_0042").payload.format, "png");
    assert_eq!(by_name("other.gif").payload.format, "gif");
    assert_eq!(by_name("other.tiff").payload.format, "tiff");
    assert_eq!(by_name("other.bmp").payload.format, "bmp");

    // EXIF: stored 320x160 landscape with red on the left; shown portrait.
    for (name, red_on_top) in [("rotated_cw.jpg", true), ("rotated_ccw.jpg", false)] {
        let rotated = by_name(name);
        assert_eq!((rotated.payload.width, rotated.payload.height), (160, 320), "{name}");
        assert_eq!(rotated.payload.taken_at.as_deref(), Some("2021-07-04T12:30:05Z"));
        assert_eq!(rotated.payload.camera_make.as_deref(), Some("TestCam"));
        assert_eq!(rotated.payload.camera_model.as_deref(), Some("Model X"));
        let gps = rotated.payload.gps.expect("gps");
        assert!((gps.lat - (48.0 + 51.0 / 60.0 + 29.5 / 3600.0)).abs() < 1e-6 && (gps.lon - 2.2944444).abs() < 1e-6);
        for (pixels, side) in [(&rotated.blip, 384usize), (&rotated.clip, 224)] {
            let top = mean_rgb(pixels, side, 0..side / 3);
            let bottom = mean_rgb(pixels, side, side * 2 / 3..side);
            let (red, blue) = if red_on_top { (top, bottom) } else { (bottom, top) };
            assert!(red[0] > 180.0 && red[2] < 60.0, "{name} side {side}: {top:?} / {bottom:?}");
            assert!(blue[2] > 180.0 && blue[0] < 60.0, "{name} side {side}: {top:?} / {bottom:?}");
        }
    }

    // A second scan of the same folder: every image is a duplicate, nothing is stored again.
    let still_there: Vec<(PathBuf, Expect)> = corpus
        .files
        .iter()
        .filter(|(p, _)| *p != corpus.vanish && *p != corpus.replace_with_dir)
        .cloned()
        .collect();
    pipeline.submit("job-2", &corpus.root).await;
    pipeline.scan().await;
    let second = pipeline.finish("job-2").await;
    let first_failures = expected_counts(&still_there).failed;
    assert_eq!(
        second.counts,
        JobCounts {
            discovered: still_there.len() as u64,
            processed: 0,
            duplicates: still_there.len() as u64 - first_failures,
            failed: first_failures,
            ..JobCounts::default()
        },
        "logs: {:#?}",
        second.logs
    );
    assert_eq!(pipeline.stored.len() as u64, expected.processed);
    assert!(pipeline.stored.values().all(|s| s.upserts == 1), "a second scan stores nothing again");
}

#[tokio::test]
async fn a_dead_workers_claim_is_taken_back_by_its_task_at_once_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir.path().join("photo.jpg"), &jpeg(&photo(500, 400, 11), 90));
    let sha = sha256_hex(&fs::read(&path).unwrap());
    // Deliveries left unsettled come back after 300 ms; the dead worker's claim would live 60 s.
    let mut pipeline = Pipeline::new(test_config("worker-b"), Duration::from_millis(300));
    pipeline.submit("job-crash", dir.path()).await;
    pipeline.scan().await;

    // Worker A fetched the task, claimed the content for it, and died: its delivery is never
    // settled and its claim would stay for the whole TTL.
    let ttl = Duration::from_secs(60);
    let task = pipeline.queue.fetch(Stream::Files, 1, Duration::from_secs(1)).await.unwrap().pop().unwrap();
    let file_task: FileTask = messages::decode(&task.payload).unwrap();
    let owner = imgfleet_worker_cpu::prepare::task_owner(&file_task.job_id, &file_task.path);
    assert!(pipeline.state.claim(COLLECTION, &sha, &owner, ttl, None).await.unwrap().is_acquired());
    let claimed_at = Instant::now();
    drop(task); // dies unsettled: the queue delivers it again after its ack wait

    // Worker B (another name) gets the task again: the claim is the task's, so it is taken back
    // at once, not after the TTL.
    let job = pipeline.finish("job-crash").await;
    assert!(claimed_at.elapsed() < Duration::from_secs(10), "took {:?}: waited for the TTL", claimed_at.elapsed());
    assert_eq!(job.counts, JobCounts { discovered: 1, processed: 1, duplicates: 0, failed: 0, ..JobCounts::default() });
    assert_eq!(pipeline.stored.len(), 1);
    assert_eq!(pipeline.stored.values().next().unwrap().upserts, 1);
    assert_eq!(
        pipeline.state.dedup_entry(COLLECTION, &sha).await.unwrap(),
        Some(imgfleet_core::ports::DedupEntry::Done { point_id: point_id_for(&sha).to_string() })
    );

    // Worker A's original delivery comes back (a replay): the content is done, so it is a
    // duplicate note for the same path, and nothing is stored again.
    pipeline.queue.publish(Stream::Files, "replay", messages::encode(&file_task)).await.unwrap();
    let job = pipeline.finish("job-crash").await;
    assert_eq!(job.counts, JobCounts { discovered: 1, processed: 1, duplicates: 0, failed: 0, ..JobCounts::default() }, "counted once");
    assert_eq!(pipeline.stored.values().next().unwrap().upserts, 1);
    assert_eq!(pipeline.stored.values().next().unwrap().payload.paths, vec![path.canonicalize().unwrap().display().to_string()]);
}

#[tokio::test]
async fn an_interrupted_scan_resumes_with_its_unsettled_files_and_only_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> =
        (0..10).map(|i| write(&dir.path().join(format!("p{i}.jpg")), &jpeg(&photo(120, 90, 100 + i), 90))).collect();
    let mut pipeline = Pipeline::new(test_config("cpu-test"), Duration::from_millis(300));
    pipeline.submit("job-resume", dir.path()).await;
    // The first scanner recorded three files as discovered, published none of their tasks, and
    // died holding the request.
    let canonical: Vec<String> = paths.iter().map(|p| p.canonicalize().unwrap().display().to_string()).collect();
    for path in &canonical[..3] {
        assert!(pipeline.state.record_discovered("job-resume", path).await.unwrap());
    }
    let held = pipeline.queue.fetch(Stream::Scan, 1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(held.len(), 1);
    drop(held);

    // Delivered again: the three are queued again and a fresh request goes on for new files.
    tokio::time::sleep(Duration::from_millis(400)).await;
    pipeline.scan().await;
    assert_eq!(pipeline.queue.depth(Stream::Files).await.unwrap().pending, 3);
    let fresh = pipeline.queue.fetch(Stream::Scan, 1, Duration::from_secs(1)).await.unwrap().pop().unwrap();
    assert_eq!(fresh.deliveries, 1, "a fresh request: interruptions do not add up to max deliveries");
    let request: ScanRequest = messages::decode(&fresh.payload).unwrap();
    assert!(request.only_new && request.resumes == 1, "{request:?}");
    pipeline.scanner.handle_one(fresh, &imgfleet_core::stage::Stop::never()).await;
    assert_eq!(pipeline.queue.depth(Stream::Files).await.unwrap().pending, 10, "the walk published only the seven new files");

    let job = pipeline.finish("job-resume").await;
    assert_eq!(job.counts, JobCounts { discovered: 10, processed: 10, duplicates: 0, failed: 0, ..JobCounts::default() });
    assert_eq!(pipeline.stored.len(), 10);
    assert!(pipeline.stored.values().all(|image| image.upserts == 1));
    assert!(job.logs.iter().any(|l| l.contains("scan interrupted; resumed: 3 unsettled files")), "{:?}", job.logs);
}

#[tokio::test]
async fn undecodable_tasks_are_terminated_and_the_stage_keeps_going() {
    let pipeline = Pipeline::new(test_config("cpu-test"), Duration::from_secs(30));
    pipeline.queue.publish(Stream::Files, "garbage", b"{not json".to_vec()).await.unwrap();
    assert_eq!(pipeline.cpu.run_batch(Duration::from_secs(1)).await.unwrap(), 1);
    let dead = pipeline.queue.dead_letters(Stream::Files, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.starts_with("undecodable file task"), "{dead:?}");
    let depth = pipeline.queue.depth(Stream::Files).await.unwrap();
    assert_eq!(depth.pending + depth.in_flight, 0);
}

/// Mean absolute difference, in RGB8 levels, between our prepared pixels and the
/// `transformers` processors' (fixtures from `scripts/cpu_stage_reference.py`).
fn mean_abs_diff(ours: &[u8], reference: &[u8]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    ours.iter().zip(reference).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>() / ours.len() as f64
}

/// Bounds on the mean absolute difference (0–255 levels) from the `transformers` processors
/// (README "CPU stage"). Measured: JPEG decoded at half scale 0.26 (CLIP) and 0.37 (BLIP), from
/// the DCT scaling (Pillow decodes at full size); PNG 0.013, from resize rounding only.
const MAX_MEAN_ABS_DIFF_JPEG: f64 = 1.0;
const MAX_MEAN_ABS_DIFF_PNG: f64 = 0.1;

#[test]
fn prepared_pixels_are_close_to_transformers() {
    use imgfleet_imaging::hash::read_and_hash;
    use imgfleet_imaging::prepare::{PrepareOptions, prepare, sniff_file};
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cpu_stage");
    let reference = |name: &str| image::open(fixtures.join(name)).unwrap().into_rgb8().into_raw();
    let prepared = |name: &str| {
        let path = fixtures.join(name);
        let file = read_and_hash(&path, u64::MAX).unwrap();
        let format = sniff_file(&file).unwrap();
        prepare(&path, &file, format, PrepareOptions::default()).unwrap()
    };

    let jpeg = prepared("photo_1024x768.jpg");
    assert_eq!(jpeg.scale_denominator, 2, "the JPEG is decoded at half scale");
    let clip = mean_abs_diff(&jpeg.clip_pixels, &reference("photo_1024x768.clip.png"));
    let blip = mean_abs_diff(&jpeg.blip_pixels, &reference("photo_1024x768.blip.png"));
    let png = prepared("photo_320x240.png");
    let png_clip = mean_abs_diff(&png.clip_pixels, &reference("photo_320x240.clip.png"));
    eprintln!("mean abs diff from transformers: jpeg clip {clip:.3}, jpeg blip {blip:.3}, png clip {png_clip:.3}");
    assert!(clip <= MAX_MEAN_ABS_DIFF_JPEG, "jpeg clip {clip}");
    assert!(blip <= MAX_MEAN_ABS_DIFF_JPEG, "jpeg blip {blip}");
    assert!(png_clip <= MAX_MEAN_ABS_DIFF_PNG, "png clip {png_clip}");
}
