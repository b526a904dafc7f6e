//! `realign plot` output: a PNG whose text is drawn with the embedded font (no system fonts needed)
//! and an SVG with the curves, from the same run folder the dashboard tests use.

mod common;

use common::*;
use dashboard::metrics::parse_step_record;

#[test]
fn plot_writes_png_and_svg_with_the_main_curves() {
    let fx = write_fixture();
    let run = fx.logdir.join(PRIMARY);
    let out = tempfile::tempdir().unwrap();

    let png = out.path().join("curves.png");
    let summary = dashboard::plot::plot_run(&run, &png).unwrap();
    let titles: Vec<&str> = summary.panels.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "reward",
            "KL to reference (per token)",
            "policy entropy",
            "losses",
            "response length (tokens)",
            "clip fraction"
        ]
    );
    assert_eq!(
        summary.panels[3].metrics,
        ["actor/pg_loss", "critic/vf_loss"]
    );
    assert_eq!((summary.steps, summary.skipped_lines), (20, 1));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, at bytes 16..24. Three columns of panels, two rows.
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (3 * 560, 48 + 2 * 360));

    let svg_path = out.path().join("curves.svg");
    dashboard::plot::plot_run(&run, &svg_path).unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"));
    for text in [
        "ppo-demo · step 20",
        "reward",
        "policy entropy",
        "actor/pg_loss",
        "critic/vf_loss",
        "step",
    ] {
        assert!(
            svg.contains(&format!(">{text}<")) || svg.contains(&format!(">\n{text}\n<")),
            "no text {text:?} in the SVG"
        );
    }
    // The curves are the polylines in the line colours with more than the two points of a legend
    // sample: seven of them (two losses share a panel), each through all 20 steps.
    let curves: Vec<usize> = svg
        .split("<polyline")
        .skip(1)
        .filter(|p| {
            ["#0072B2", "#D55E00"]
                .iter()
                .any(|c| p.contains(&format!("stroke=\"{c}\"")))
        })
        .map(|p| {
            p.split("points=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .split_whitespace()
                .count()
        })
        .filter(|&n| n > 2)
        .collect();
    assert_eq!(
        curves, [20; 7],
        "reward, kl, entropy, pg and vf loss, length, clip fraction"
    );
}

#[test]
fn png_text_is_rasterised_from_the_embedded_font() {
    // The title band holds only the title text: dark pixels there exist only if glyphs were drawn.
    let records: Vec<_> = (1..=5u64)
        .filter_map(|s| {
            parse_step_record(
                serde_json::from_str(&format!("{{\"step\": {s}, \"reward/mean\": {s}}}")).unwrap(),
            )
        })
        .collect();
    let (rgb, (w, _h)) = dashboard::plot::render_rgb("realign test title", &records).unwrap();
    let dark_in_title = (0..48usize)
        .flat_map(|y| (0..w as usize).map(move |x| (y * w as usize + x) * 3))
        .filter(|&i| rgb[i] < 128 && rgb[i + 1] < 128 && rgb[i + 2] < 128)
        .count();
    assert!(
        dark_in_title > 200,
        "title text not drawn: {dark_in_title} dark pixels"
    );
}

#[test]
fn plot_names_a_missing_or_wrong_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let err =
        dashboard::plot::plot_run(&tmp.path().join("nope"), &tmp.path().join("x.png")).unwrap_err();
    assert!(
        err.to_string().contains("run folder") && err.to_string().contains("does not exist"),
        "{err}"
    );
    let err = dashboard::plot::plot_run(tmp.path(), &tmp.path().join("x.png")).unwrap_err();
    assert!(
        err.to_string()
            .contains("is not a run folder: it has no metrics.jsonl"),
        "{err}"
    );
    let fx = write_fixture();
    let err =
        dashboard::plot::plot_run(&fx.logdir.join(PRIMARY), &tmp.path().join("x.jpg")).unwrap_err();
    assert!(
        err.to_string().contains("use a .png or .svg file name"),
        "{err}"
    );
}
