//! Contract suites: one per port, written once, run against every adapter of that port.
//! An adapter's test file invokes the suite's macro with a fixture that opens the adapter.

pub mod blobs;
pub mod encoder;
pub mod queue;
pub mod state;
pub mod vectors;

/// One `#[tokio::test]` running one contract case against a fresh fixture.
#[macro_export]
macro_rules! contract_case {
    ($name:ident, $case:path, $fixture:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let fixture = $fixture;
            $case(&fixture).await;
        }
    };
}
