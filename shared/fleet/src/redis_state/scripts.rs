//! The Lua scripts of the store, one `.lua` file each under `scripts/` (their headers say what
//! they take and answer), loaded once into [`SCRIPTS`]. The job scripts are prefixed with
//! `job_prelude.lua`, whose placeholders are filled in from the domain types here.

use std::sync::LazyLock;

use imgfleet_core::domain::JobStatus;
use imgfleet_core::ports::state::MAX_JOB_LOG_LINES;
use redis::Script;

use super::records::{ALL_STATUSES, status_name};

const CLAIM_LUA: &str = include_str!("scripts/claim.lua");
const DEDUP_ENTRY_LUA: &str = include_str!("scripts/dedup_entry.lua");
const MARK_DONE_LUA: &str = include_str!("scripts/mark_done.lua");
const DELETE_IF_PREFIX_LUA: &str = include_str!("scripts/delete_if_prefix.lua");
const PUT_SOURCE_ENTRY_LUA: &str = include_str!("scripts/put_source_entry.lua");
const REMOVE_SOURCE_ENTRIES_LUA: &str = include_str!("scripts/remove_source_entries.lua");
const SOURCE_ENTRIES_UNDER_LUA: &str = include_str!("scripts/source_entries_under.lua");

/// Helpers shared by the job scripts; `{FINAL}`, `{RUNNING}`, `{COMPLETED}` and `{MAX_LOGS}`
/// are filled in from the domain types ([`job_prelude`]).
const JOB_PRELUDE_LUA: &str = include_str!("scripts/job_prelude.lua");
const CREATE_JOB_LUA: &str = include_str!("scripts/create_job.lua");
const LOAD_JOBS_LUA: &str = include_str!("scripts/load_jobs.lua");
const SET_STATUS_LUA: &str = include_str!("scripts/set_status.lua");
const RECORD_DISCOVERED_LUA: &str = include_str!("scripts/record_discovered.lua");
const RECORD_OUTCOME_LUA: &str = include_str!("scripts/record_outcome.lua");
const APPEND_LOG_LUA: &str = include_str!("scripts/append_log.lua");
const MARK_SCAN_COMPLETE_LUA: &str = include_str!("scripts/mark_scan_complete.lua");
const COMPLETE_IF_DONE_LUA: &str = include_str!("scripts/complete_if_done.lua");

pub(super) struct Scripts {
    pub(super) claim: Script,
    pub(super) dedup_entry: Script,
    pub(super) mark_done: Script,
    pub(super) delete_if_prefix: Script,
    pub(super) put_source_entry: Script,
    pub(super) remove_source_entries: Script,
    pub(super) source_entries_under: Script,
    pub(super) create_job: Script,
    pub(super) load_jobs: Script,
    pub(super) set_status: Script,
    pub(super) record_discovered: Script,
    pub(super) record_outcome: Script,
    pub(super) append_log: Script,
    pub(super) mark_scan_complete: Script,
    pub(super) complete_if_done: Script,
}

/// The job scripts' prelude with the domain's names and bounds filled in.
fn job_prelude() -> String {
    let finals: Vec<String> = ALL_STATUSES
        .iter()
        .filter(|s| s.is_final())
        .map(|s| format!("['{}'] = true", status_name(*s)))
        .collect();
    JOB_PRELUDE_LUA
        .replace("{FINAL}", &format!("{{{}}}", finals.join(", ")))
        .replace("{RUNNING}", status_name(JobStatus::Running))
        .replace("{COMPLETED}", status_name(JobStatus::Completed))
        .replace("{MAX_LOGS}", &MAX_JOB_LOG_LINES.to_string())
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let prelude = job_prelude();
    let job = |body: &str| Script::new(&format!("{prelude}{body}"));
    Scripts {
        claim: Script::new(CLAIM_LUA),
        dedup_entry: Script::new(DEDUP_ENTRY_LUA),
        mark_done: Script::new(MARK_DONE_LUA),
        delete_if_prefix: Script::new(DELETE_IF_PREFIX_LUA),
        put_source_entry: Script::new(PUT_SOURCE_ENTRY_LUA),
        remove_source_entries: Script::new(REMOVE_SOURCE_ENTRIES_LUA),
        source_entries_under: Script::new(SOURCE_ENTRIES_UNDER_LUA),
        create_job: job(CREATE_JOB_LUA),
        load_jobs: job(LOAD_JOBS_LUA),
        set_status: job(SET_STATUS_LUA),
        record_discovered: job(RECORD_DISCOVERED_LUA),
        record_outcome: job(RECORD_OUTCOME_LUA),
        append_log: job(APPEND_LOG_LUA),
        mark_scan_complete: job(MARK_SCAN_COMPLETE_LUA),
        complete_if_done: job(COMPLETE_IF_DONE_LUA),
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_prelude_is_filled_in() {
        let p = job_prelude();
        assert!(!p.contains("{FINAL}") && !p.contains("{RUNNING}") && !p.contains("{COMPLETED}") && !p.contains("{MAX_LOGS}"));
        assert!(p.contains("local FINAL = {['completed'] = true, ['failed'] = true, ['cancelled'] = true}"), "{p}");
        assert!(p.contains(&format!("local MAX_LOGS = {MAX_JOB_LOG_LINES}")));
    }
}
