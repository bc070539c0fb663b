//! Progress bars in one style, drawn together: a sweep's bar stays above the bars of the
//! run it is in (training, key statistics, evaluation).

use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// A bar of `len` steps labelled `prefix`, or a hidden one when `show` is false.
pub fn bar(show: bool, len: usize, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = multi().add(ProgressBar::new(len as u64));
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_owned());
    pb
}

/// Sends every bar from now on to `target` instead of the terminal's stderr (the
/// Python module draws them in a notebook this way).
pub fn draw_to(target: indicatif::ProgressDrawTarget) {
    multi().set_draw_target(target);
}
