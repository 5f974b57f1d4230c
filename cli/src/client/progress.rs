//! The progress bar `ingest` draws on stderr while it follows a job: a spinner while the scan
//! still finds files, then settled / discovered with the server's ETA.

use std::time::Duration;

use imgfleet_api::routes::ingest::JobView;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::format::bar_message;

pub(super) struct JobBar {
    bar: ProgressBar,
    /// The style it has: the scan's spinner or the bar; `None` before the first status.
    scanning: Option<bool>,
}

impl JobBar {
    /// A bar on stderr when `visible` (stdout is a terminal), else one that draws nothing.
    pub(super) fn new(visible: bool) -> Self {
        let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        let waiting = ProgressStyle::with_template("{spinner:.cyan} [{elapsed_precise}] {msg}").expect("valid template");
        bar.set_style(waiting);
        bar.set_message("waiting for the job's status");
        if visible {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Self { bar, scanning: None }
    }

    pub(super) fn update(&mut self, status: &JobView) {
        let scanning = !status.scan_complete && !status.status.is_final();
        self.bar.set_message(bar_message(status));
        self.bar.set_length(status.counts.discovered);
        self.bar.set_position(status.counts.settled().min(status.counts.discovered));
        if self.scanning != Some(scanning) {
            let template = if scanning {
                "{spinner:.cyan} [{elapsed_precise}] scanning: {len} found · {msg}"
            } else {
                "{spinner:.cyan} [{elapsed_precise}] [{wide_bar:.cyan/blue}] {pos}/{len} · {msg}"
            };
            let style = ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ");
            self.bar.set_style(style);
            self.scanning = Some(scanning);
        }
    }

    pub(super) fn note(&self, text: &str) {
        self.bar.set_message(text.to_owned());
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    pub(super) fn abandon(&self) {
        self.bar.abandon();
    }
}
