//! A character-level tokenizer for synthetic tasks, written as HF files (tokenizer.json,
//! tokenizer_config.json) so the rest of realign loads it like any other model's tokenizer.
//!
//! The model is BPE with no merges: with no pre-tokenizer, the input is one word split into its
//! characters, each a token; the `Fuse` decoder joins them back without spaces.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

/// The end-of-sequence token, id 0.
pub const EOS: &str = "<|endoftext|>";

/// Writes tokenizer.json and tokenizer_config.json for `alphabet` into `dir`; returns the vocab
/// size (EOS + one id per distinct character, in alphabet order).
pub fn write(dir: &Path, alphabet: &str) -> Result<usize> {
    let mut vocab = serde_json::Map::new();
    vocab.insert(EOS.to_string(), json!(0));
    for c in alphabet.chars() {
        let next = vocab.len();
        vocab.entry(c.to_string()).or_insert(json!(next));
    }
    let size = vocab.len();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 0, "content": EOS, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    });
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": EOS,
        "bos_token": null,
        "add_bos_token": false,
        "model_max_length": 4096
    });
    crate::atomic::write_file(
        &dir.join("tokenizer.json"),
        serde_json::to_string_pretty(&tokenizer)?.as_bytes(),
    )?;
    crate::atomic::write_file(
        &dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_tokenizers_crate() {
        let dir = tempfile::tempdir().unwrap();
        let v = write(dir.path(), "0123456789+-=").unwrap();
        assert_eq!(v, 14);
        let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        let enc = tok.encode("12+7=19", false).unwrap();
        // One token per character; '1' is id 2 (EOS 0, '0' 1, '1' 2, ...).
        assert_eq!(enc.get_ids(), &[2, 3, 11, 8, 13, 2, 10]);
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "12+7=19");
        let with_eos = tok.encode("3<|endoftext|>", false).unwrap();
        assert_eq!(with_eos.get_ids(), &[4, 0]);
    }
}
