//! Client commands: `imgfleet ingest`, `upload`, `status`, `cancel`, `jobs` and `search` talk to a running
//! `imgfleet serve` over HTTP. Each `run_*` gives the process exit code; errors come back as
//! `anyhow` errors whose text is what [`exit_code`] prints after `error: `.
//!
//! One file per command (its arguments and its run); `http` is the client, `progress` the bar
//! `ingest` draws. The text the commands print is made by the pure functions in `format`, apart
//! from the I/O, and tested there. A job's status is read into the server's own type,
//! [`imgfleet_api::routes::ingest::JobView`], so the two cannot drift apart.

mod cancel;
mod format;
mod http;
mod ingest;
mod jobs;
mod progress;
mod search;
mod status;
mod upload;

pub use cancel::{CancelArgs, run_cancel};
pub use ingest::{IngestArgs, run_ingest};
pub use jobs::{JobsArgs, run_jobs};
pub use search::{SearchArgs, run_search};
pub use status::{StatusArgs, run_status};
pub use upload::{UploadArgs, run_upload};

/// Exit code of a command run, printing its error (`error: …`) to stderr.
pub fn exit_code(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::{CommandFactory, Parser, Subcommand};

    use super::*;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Subcommand, Debug)]
    enum TestCommand {
        Ingest(IngestArgs),
        Status(StatusArgs),
        Jobs(JobsArgs),
        Search(SearchArgs),
    }

    fn parse(args: &[&str]) -> Result<TestCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("imgfleet").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn the_commands_parse() {
        TestCli::command().debug_assert();
        let TestCommand::Search(search) = parse(&["search", "a dog", "--limit", "3", "--json"]).unwrap() else { panic!() };
        assert_eq!(search.text.as_deref(), Some("a dog"));
        assert_eq!((search.limit, search.client.json), (3, true));
        assert!(parse(&["search"]).is_err(), "one of TEXT / --image / --like is required");
        assert!(parse(&["search", "x", "--like", "id"]).is_err(), "only one of them");
        assert!(parse(&["search", "--image", "a.jpg", "--like", "id"]).is_err());
        let TestCommand::Search(like) = parse(&["search", "--like", "abc"]).unwrap() else { panic!() };
        assert_eq!(like.like.as_deref(), Some("abc"));

        let TestCommand::Ingest(ingest) =
            parse(&["ingest", "photos", "--collection", "c", "--no-wait", "--server", "http://h:1"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(ingest.dir, PathBuf::from("photos"));
        assert_eq!((ingest.collection.as_deref(), ingest.no_wait, ingest.poll_ms), (Some("c"), true, 500));
        assert_eq!(ingest.client.server, "http://h:1");
        assert!(parse(&["ingest", "d", "--poll-ms", "0"]).is_err());

        let TestCommand::Jobs(jobs) = parse(&["jobs", "--limit", "5", "--api-key", "k"]).unwrap() else { panic!() };
        assert_eq!((jobs.limit, jobs.client.api_key.as_deref()), (5, Some("k")));
        assert!(matches!(parse(&["status", "j-1"]).unwrap(), TestCommand::Status(s) if s.job == "j-1"));
    }
}
