//! Opens the dashboard in headless Chromium (Debian's `chromium`) against a temporary log directory
//! and checks what the page rendered after its scripts ran: every chart, the overlay, the health
//! warnings, the sample table, the timeline and the config, with the run's own numbers. Saves a
//! screenshot as an artifact and prints its path.
//!
//! Without Chromium the test prints "skipped" and passes, except under CI=true, where it fails:
//! CI installs Chromium (.ci/run), so a missing browser there is a broken setup, not a skip.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Runs Chromium headless with a fresh profile; returns stdout. `extra` adds the mode flags.
fn chromium(bin: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1440,2500",
        // Virtual time runs the page's polling and fetches, then the DOM is taken: no sleeps.
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url);
    // Output goes to files, not pipes: a DOM dump is larger than a pipe's buffer, and a child
    // blocked on a full pipe while we wait for it to exit would never finish.
    let out_path = profile.path().join("stdout.txt");
    let err_path = profile.path().join("stderr.txt");
    cmd.stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    // A guard against a hung browser, not a performance check.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("chromium did not finish within 120 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}): {stderr}");
    std::fs::read_to_string(&out_path).unwrap()
}

/// The HTML of the chart card for `metric`, up to the next card.
fn chart_card<'a>(dom: &'a str, metric: &str) -> &'a str {
    let start = dom
        .find(&format!("class=\"chart\" data-metric=\"{metric}\""))
        .unwrap_or_else(|| panic!("no chart for {metric}"));
    let rest = &dom[start..];
    let end = rest[1..]
        .find("class=\"chart\"")
        .map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

/// The header's status text, for failure messages.
fn status_line(dom: &str) -> &str {
    dom.split("id=\"status-text\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or("(no status)")
}

#[test]
fn dashboard_page_renders_the_run_in_headless_chromium() {
    let Some(bin) = find_chromium() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("chromium is not installed: CI must install Debian's `chromium` package (.ci/run does)");
        }
        println!("skipped: chromium not installed (apt-get install chromium), the dashboard browser test did not run");
        return;
    };
    let fx = write_fixture();
    // The run is still training: just before the page's second poll of its metrics, the trainer
    // finishes the half-written step 21. The page must show step 21 without a reload.
    let polls = Arc::new(AtomicUsize::new(0));
    let metrics_file = fx.logdir.join(PRIMARY).join("metrics.jsonl");
    let seen = polls.clone();
    let router = dashboard::server::app(&fx.logdir)
        .unwrap()
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let (polls, file) = (seen.clone(), metrics_file.clone());
                async move {
                    let primary_poll = req.uri().path() == "/api/metrics"
                        && req
                            .uri()
                            .query()
                            .is_some_and(|q| q.starts_with(&format!("run={PRIMARY}&")));
                    if primary_poll && polls.fetch_add(1, Ordering::SeqCst) == 1 {
                        let mut f = std::fs::OpenOptions::new()
                            .append(true)
                            .open(&file)
                            .unwrap();
                        writeln!(f, "}}").unwrap();
                    }
                    next.run(req).await
                }
            },
        ));
    let (addr, _rt) = start_app(router);
    let url = format!(
        "http://{addr}/#run={PRIMARY}&overlay={}",
        OVERLAY.replace('/', "%2F")
    );

    let dom = chromium(&bin, &url, &["--dump-dom".to_string()]);
    assert!(
        polls.load(Ordering::SeqCst) >= 2,
        "the page polled its metrics only once"
    );

    assert!(
        !dom.contains("data-error="),
        "the page reported an error: {}",
        status_line(&dom)
    );
    assert!(dom.contains("live · updated"), "{}", status_line(&dom));
    // Every scalar of the primary run has a chart.
    assert_eq!(dom.matches("class=\"chart\" data-metric=").count(), 12);

    // Sidebar: both runs, the symlink out of the log directory absent.
    assert!(
        dom.contains(&format!("data-run=\"{PRIMARY}\""))
            && dom.contains(&format!("data-run=\"{OVERLAY}\""))
    );
    assert!(!dom.contains("SECRET") && !dom.contains("data-run=\"link\""));
    assert!(
        dom.contains("1 malformed line skipped"),
        "the bad line at step 7 is reported"
    );

    // Charts grouped by prefix, one per scalar, the primary's latest value on each card.
    for group in [
        "reward",
        "kl",
        "actor",
        "critic",
        "response_length",
        "timing_s",
        "perf",
    ] {
        assert!(
            dom.contains(&format!("data-group=\"{group}\"")),
            "group {group} missing"
        );
    }
    // reward/mean: the primary's 20 steps plus step 21, which arrived while the page was open.
    let live = STEPS + 1;
    let reward_card = chart_card(&dom, "reward/mean");
    assert!(
        reward_card.contains(&format!("data-run=\"{PRIMARY}\" data-points=\"{live}\"")),
        "{reward_card}"
    );
    assert!(
        reward_card.contains(&format!("data-run=\"{OVERLAY}\" data-points=\"{STEPS}\"")),
        "overlay: {reward_card}"
    );
    assert!(
        reward_card.contains(">0.9</span>"),
        "latest reward (step 21): {reward_card}"
    );
    assert!(
        dom.contains("step <b>21</b>"),
        "the overview follows the new step"
    );
    // The primary's path goes through 21 points: one move and 20 line segments.
    let d = reward_card
        .split(" d=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(
        (d.matches('M').count(), d.matches('L').count()),
        (1, live as usize - 1),
        "{d}"
    );
    let entropy = chart_card(&dom, "actor/entropy");
    assert!(
        entropy.contains(&format!("data-points=\"{STEPS}\"")),
        "{entropy}"
    );
    // The NaN grad norm: a gap (19 finite points) and a red marker.
    let grad = chart_card(&dom, "actor/grad_norm");
    assert!(
        grad.contains("data-points=\"19\"") && grad.contains("class=\"nonfinite\""),
        "{grad}"
    );
    assert!(chart_card(&dom, "perf/gen_tokens_per_s").contains(">4200</span>"));

    // Health: the NaN as an error, the collapsing entropy as a warning.
    assert!(dom.contains("class=\"warning error\" data-kind=\"non_finite\""));
    assert!(dom.contains("actor/grad_norm is NaN at step 13"));
    assert!(dom.contains("data-kind=\"entropy_collapse\""));

    // Sample table of the latest step, HTML in prompts shown as text.
    assert!(dom.contains("id=\"sample-table\""));
    assert!(dom.contains("17 + 20 = 37"));
    assert!(
        dom.contains("Is &lt;b&gt;2 &amp; 2&lt;/b&gt; four?"),
        "prompt must be escaped"
    );
    assert!(dom.contains("<td class=\"num reward\"") && dom.contains(">-0.25</td>"));
    assert!(dom.contains("<th>correct</th><th>format</th>"));

    // Timeline of step 20: every call as a bar, durations labelled.
    for call in [
        "actor_gen",
        "reward_inf",
        "ref_inf",
        "critic_inf",
        "actor_train",
        "critic_train",
        "reshard",
    ] {
        assert!(
            dom.contains(&format!("class=\"bar\" data-call=\"{call}\"")),
            "no bar for {call}"
        );
    }
    for label in [
        "actor_gen: 1.5 s",
        "reward_inf: 250 ms",
        "actor_train: 2.25 s",
        "reshard: 125 ms",
    ] {
        assert!(dom.contains(label), "no bar titled {label:?}");
    }
    assert!(dom.contains("step 20 · 5.13 s from first call to last"));

    // The resolved config.
    assert!(dom.contains("kl_coef</span> = 0.05"));

    // With smoothing (from the link), every chart still renders, smoothed line over a faint raw one;
    // flat series (reward/std, timing_s/gen) are the edge case for the axis range.
    let smoothed = chromium(
        &bin,
        &format!("{url}&smoothing=0.6"),
        &["--dump-dom".to_string()],
    );
    assert!(
        !smoothed.contains("data-error="),
        "the page reported an error: {}",
        status_line(&smoothed)
    );
    assert_eq!(smoothed.matches("class=\"chart\" data-metric=").count(), 12);
    assert!(chart_card(&smoothed, "reward/std").contains("class=\"raw\""));
    assert!(chart_card(&smoothed, "timing_s/gen").contains(&format!("data-points=\"{STEPS}\"")));

    // The screenshot artifact.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::remove_file(&shot).ok();
    chromium(&bin, &url, &[format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    println!("dashboard screenshot: {}", shot.display());
}
