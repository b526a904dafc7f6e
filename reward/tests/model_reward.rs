//! The model reward against transformers' *ForSequenceClassification scores on tiny random-init
//! checkpoints (made by scripts/make_reward_fixture.py): the score of the last token of
//! prompt + response, for a packed batch of assorted lengths, on every test device.

use std::path::{Path, PathBuf};

use kernels::testing::test_devices;
use reward::{build_reward, ModelReward, ModelRewardConfig, Reward, RewardConfig, Sample};

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture's samples and transformers' scores for them.
fn expected(name: &str) -> (Vec<Sample>, Vec<f32>) {
    let text = std::fs::read_to_string(fixture_dir(name).join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let samples = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let tokens = |k: &str| {
                s[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect::<Vec<_>>()
            };
            Sample {
                prompt_tokens: tokens("prompt_tokens"),
                response_tokens: tokens("response_tokens"),
                ..Sample::from_text(
                    s["prompt"].as_str().unwrap(),
                    s["response"].as_str().unwrap(),
                )
            }
        })
        .collect();
    let scores = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (samples, scores)
}

async fn check_against_transformers(name: &str, max_batch_tokens: usize) {
    let (samples, want) = expected(name);
    for device in test_devices() {
        let (dtype, tol) = if device.is_cpu() {
            ("f32", 1e-4)
        } else {
            ("bf16", 5e-2)
        };
        let config = ModelRewardConfig {
            path: fixture_dir(name),
            device: device.to_string(),
            dtype: Some(dtype.into()),
            max_batch_tokens,
        };
        let reward = ModelReward::load(&config).unwrap();
        let got: Vec<f32> = reward
            .score(&samples)
            .await
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect();
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name} on {device} {dtype}, max_batch_tokens {max_batch_tokens}: max abs err {err:.2e}");
        assert!(
            err <= tol,
            "{name} on {device}: got {got:?}, transformers {want:?}"
        );
    }
}

#[tokio::test]
async fn llama_scores_match_transformers() {
    // One packed forward for the whole batch.
    check_against_transformers("tiny_llama_rm", 8192).await;
}

#[tokio::test]
async fn qwen2_scores_match_transformers_across_several_forwards() {
    // A small token budget splits the batch into several packed forwards.
    check_against_transformers("tiny_qwen2_rm", 20).await;
}

#[tokio::test]
async fn model_reward_from_config() {
    let toml_text = format!(
        "type = \"model\"\npath = {:?}\nmax_batch_tokens = 64\n",
        fixture_dir("tiny_llama_rm").to_str().unwrap()
    );
    let config: RewardConfig = toml::from_str(&toml_text).unwrap();
    let reward = build_reward(&config).unwrap();
    let (samples, want) = expected("tiny_llama_rm");
    let got = reward.score(&samples[..2]).await.unwrap();
    assert!(
        (got[0].value - want[0]).abs() <= 1e-4 && (got[1].value - want[1]).abs() <= 1e-4,
        "{got:?} vs {want:?}"
    );
}

#[tokio::test]
async fn bad_inputs_are_clear_errors() {
    let config = ModelRewardConfig {
        path: fixture_dir("tiny_llama_rm"),
        device: "cpu".into(),
        dtype: None,
        max_batch_tokens: 64,
    };
    let reward = ModelReward::load(&config).unwrap();
    let empty = Sample::from_text("", "");
    let msg = format!("{:#}", reward.score(&[empty]).await.unwrap_err());
    assert!(
        msg.contains("sample 0 has no prompt or response tokens"),
        "{msg}"
    );
    let out_of_vocab = Sample {
        prompt_tokens: vec![1, 2],
        response_tokens: vec![96],
        ..Sample::from_text("p", "r")
    };
    let msg = format!("{:#}", reward.score(&[out_of_vocab]).await.unwrap_err());
    assert!(
        msg.contains("token id 96") && msg.contains("vocabulary (size 96)"),
        "{msg}"
    );

    let missing = ModelRewardConfig {
        path: fixture_dir("no_such_model"),
        ..config.clone()
    };
    let msg = format!("{:#}", ModelReward::load(&missing).err().unwrap());
    assert!(msg.contains("no_such_model"), "{msg}");
}
