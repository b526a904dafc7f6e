//! The `[reward]` config section as the scheduler embeds it in its TOML: parsing, errors that
//! name the key, and building working rewards from it.

use std::path::Path;

use reward::{build_pipeline, build_reward, RewardConfig, RewardSpec, Sample, ShapingConfig};
use serde::Deserialize;

/// Stands in for the scheduler's top-level config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Top {
    reward: RewardConfig,
}

fn parse(toml_text: &str) -> Result<RewardConfig, String> {
    toml::from_str::<Top>(toml_text)
        .map(|t| t.reward)
        .map_err(|e| e.to_string())
}

fn parse_err(toml_text: &str) -> String {
    parse(toml_text).expect_err("config should be rejected")
}

#[tokio::test]
async fn single_rule_with_shaping() {
    let config = parse(
        r#"
        [reward]
        type = "numeric_match"
        reference_key = "solution"
        miss = -1.0

        [reward.shaping]
        scale = 2
        clip = [-1.5, 1.5]
        "#,
    )
    .unwrap();
    assert_eq!(
        config.shaping,
        ShapingConfig {
            scale: 2.0,
            clip: Some([-1.5, 1.5]),
            ..Default::default()
        }
    );
    assert!(
        matches!(&config.spec, RewardSpec::NumericMatch(c) if c.reference_key == "solution" && c.miss == -1.0)
    );
    let pipeline = build_pipeline(&config).unwrap();
    let samples = [
        Sample::from_text("q", "#### 5").with_extra("solution", "5"),
        Sample::from_text("q", "#### 6").with_extra("solution", "5"),
    ];
    let scored = pipeline.score(&samples).await.unwrap();
    assert_eq!(
        scored.raw.iter().map(|s| s.value).collect::<Vec<_>>(),
        [1.0, -1.0]
    );
    assert_eq!(scored.shaped, [1.5, -1.5]);
}

#[tokio::test]
async fn weighted_sum_of_rules() {
    let config = parse(
        r#"
        [reward]
        type = "weighted_sum"

        [[reward.components]]
        type = "numeric_match"
        name = "correct"

        [[reward.components]]
        type = "format"
        preset = "hash_answer"
        weight = 0.2

        [[reward.components]]
        type = "length_penalty"
        unit = "chars"
        target = 10
        slope = 0.1
        "#,
    )
    .unwrap();
    let reward = build_reward(&config).unwrap();
    let samples = [
        Sample::from_text("q", "#### 12").with_extra("answer", 12), // 7 chars
        Sample::from_text("q", "it is 12, I think").with_extra("answer", 12), // 17 chars
    ];
    let scores = reward.score(&samples).await.unwrap();
    let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
    assert!(close(scores[0].value, 1.0 + 0.2), "{scores:?}");
    assert!(close(scores[1].value, 1.0 - 0.7), "{scores:?}");
    let names: Vec<&str> = scores[1].sub_scores.keys().map(String::as_str).collect();
    assert_eq!(names, ["correct", "format", "length_penalty"]);
    assert!(close(scores[1].sub_scores["length_penalty"], -0.7));
}

#[tokio::test]
async fn external_plugin_from_config() {
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/reward_plugin.py");
    let config = parse(&format!(
        "[reward]\ntype = \"external\"\ncommand = [\"python3\", {:?}]\ntimeout_s = 30\nmax_restarts = 1\n",
        plugin.to_str().unwrap()
    ))
    .unwrap();
    let pipeline = build_pipeline(&config).unwrap();
    let scored = pipeline
        .score(&[Sample::from_text("q", "#### 4").with_extra("answer", "4")])
        .await
        .unwrap();
    let metrics = scored.metrics();
    assert!((metrics["reward/mean"] - 1.1).abs() < 1e-6, "{metrics:?}");
    assert_eq!(metrics["reward/correct/mean"], 1.0);
    assert_eq!(metrics["reward/formatted/mean"], 1.0);
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        ("[reward]\nreference_key = 'a'", "reward.type is missing"),
        ("[reward]\ntype = 'numeric'", "reward.type: unknown reward type \"numeric\""),
        ("[reward]\ntype = 'numeric_match'\ntolerence = 0.1", "unknown field `tolerence`"),
        ("[reward]\ntype = 'numeric_match'\nabs_tolerance = 'small'", "reward.abs_tolerance: invalid type: string \"small\", expected f64"),
        ("[reward]\ntype = 'regex_match'", "reward: missing field `pattern`"),
        ("[reward]\ntype = 'exact_match'\n[reward.shaping]\nscael = 2.0", "reward.shaping"),
        ("[reward]\ntype = 'exact_match'\n[reward.shaping]\nclip = [1.0, -1.0]", "reward.shaping: shaping: clip = [1, -1] needs lo <= hi"),
        ("[reward]\ntype = 'external'\ncommand = ['x']\ntimeout = 5", "unknown field `timeout`"),
        ("[reward]\ntype = 'weighted_sum'", "reward.components is missing"),
        ("[reward]\ntype = 'model'\ndevice = 'cpu'", "reward: missing field `path`"),
        ("[reward]\ntype = 'model'\npath = 'rm'\nbatch_tokens = 5", "reward.batch_tokens: unknown field `batch_tokens`"),
        (
            "[reward]\ntype = 'weighted_sum'\n[[reward.components]]\ntype = 'exact_match'\n[[reward.components]]\ntype = 'numeric_match'\nrel_tolerance = 'x'",
            "reward.components[1].rel_tolerance: invalid type",
        ),
        ("[reward]\ntype = 'weighted_sum'\n[[reward.components]]\ntype = 'format'\npreset = 'xml'", "reward.components[0].preset: unknown variant `xml`"),
        ("[reward]\ntype = 'weighted_sum'\n[[reward.components]]\ntype = 'exact_match'\nweight = 'heavy'", "reward.components[0].weight: invalid type"),
    ];
    for &(text, want) in cases {
        let msg = parse_err(text);
        eprintln!("{msg}");
        assert!(
            msg.contains(want),
            "config:\n{text}\nerror:\n{msg}\nexpected it to contain: {want}"
        );
    }
}

#[test]
fn build_errors_name_the_component() {
    let config = parse("[reward]\ntype = 'weighted_sum'\n[[reward.components]]\ntype = 'exact_match'\n[[reward.components]]\ntype = 'regex_match'\npattern = '(oops'").unwrap();
    let msg = format!("{:#}", build_reward(&config).err().unwrap());
    assert!(
        msg.contains("reward.components[1] (regex_match)") && msg.contains("invalid pattern"),
        "{msg}"
    );
    let config = parse("[reward]\ntype = 'weighted_sum'\n[[reward.components]]\ntype = 'exact_match'\n[[reward.components]]\ntype = 'exact_match'").unwrap();
    let msg = format!("{:#}", build_reward(&config).err().unwrap());
    assert!(
        msg.contains("two components are named 'exact_match'"),
        "{msg}"
    );
}

#[test]
fn config_round_trips_through_serde() {
    let config = parse(
        r#"
        [reward]
        type = "weighted_sum"
        [[reward.components]]
        type = "regex_match"
        pattern = "<answer>(.*)</answer>"
        reference_key = "answer"
        name = "tagged"
        weight = 0.5
        [[reward.components]]
        type = "external"
        command = ["python3", "judge.py"]
        env = { JUDGE = "strict" }
        [reward.shaping]
        normalize = true
        "#,
    )
    .unwrap();
    let json = serde_json::to_value(&config).unwrap();
    let back: RewardConfig = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, config, "{json}");
    let text = toml::to_string(&Top2 {
        reward: config.clone(),
    })
    .unwrap();
    assert_eq!(parse(&text).unwrap(), config, "{text}");
}

#[derive(serde::Serialize)]
struct Top2 {
    reward: RewardConfig,
}
