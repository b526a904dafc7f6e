//! Pulling the final numeric answer out of free text ("#### 42", "\boxed{42}", "The answer is
//! -3.5", "1,234", "\frac{3}{4}", "3/4").
//!
//! Models state their answer in a handful of conventional ways; we look for the most explicit
//! marker first and fall back to "the last number in the text", which is what GSM8K-style graders
//! do.

use std::sync::LazyLock;

use regex::Regex;

/// One number: an optional minus, then a LaTeX fraction, a plain fraction `a/b`, a number with
/// thousands separators, or a plain decimal.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?x)
        (?P<neg>[-−]\s*)?
        (?:
            \\[dt]?frac\s*\{\s*(?P<fnum>[0-9.]+)\s*\}\s*\{\s*(?P<fden>[0-9.]+)\s*\}
          | (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
            (?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?
        )",
    )
    .expect("NUMBER regex is valid")
});

/// The phrases after which a model states its final answer ("The answer is 7", "Answer: 7").
static ANSWER_MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)answer\s*(?:is|:|=)").expect("ANSWER_MARKER regex is valid"));

/// All numbers in `text`, in order of appearance.
pub fn numbers_in(text: &str) -> Vec<f64> {
    // LaTeX writes thousands separators as "1{,}234".
    let text = text.replace("{,}", ",");
    let mut out = Vec::new();
    for caps in NUMBER.captures_iter(&text) {
        let whole = caps.get(0).expect("group 0 always exists");
        // A minus right after a letter or digit is a hyphen or a subtraction ("pages 3-5",
        // "x-2"), not a sign.
        let prev = text[..whole.start()].chars().next_back();
        let negative = caps.name("neg").is_some() && !prev.is_some_and(|c| c.is_alphanumeric());
        let value = if let (Some(n), Some(d)) = (caps.name("fnum"), caps.name("fden")) {
            ratio(n.as_str(), d.as_str())
        } else {
            let num = caps.name("num").expect("one alternative matched").as_str();
            match caps.name("den") {
                Some(d) => ratio(num, d.as_str()),
                None => parse_plain(num),
            }
        };
        if let Some(v) = value {
            out.push(if negative { -v } else { v });
        }
    }
    out
}

/// The final answer stated in `text`, or `None` if it contains no number.
///
/// Looks, in order, at: the text after the last `####` (GSM8K), the last `\boxed{...}`, the text
/// after the last "answer is" / "answer:", and finally the last number anywhere.
pub fn extract_final_number(text: &str) -> Option<f64> {
    if let Some(pos) = text.rfind("####") {
        if let Some(&v) = numbers_in(&text[pos + 4..]).first() {
            return Some(v);
        }
    }
    if let Some(inner) = last_boxed(text) {
        if let Some(&v) = numbers_in(inner).first() {
            return Some(v);
        }
    }
    if let Some(m) = ANSWER_MARKER.find_iter(text).last() {
        if let Some(&v) = numbers_in(&text[m.end()..]).first() {
            return Some(v);
        }
    }
    numbers_in(text).last().copied()
}

/// The contents of the last `\boxed{...}` (or `\fbox{...}`), with nested braces balanced.
fn last_boxed(text: &str) -> Option<&str> {
    let start = text
        .rfind("\\boxed{")
        .map(|p| p + "\\boxed{".len())
        .or_else(|| text.rfind("\\fbox{").map(|p| p + "\\fbox{".len()))?;
    let mut depth = 1usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    // Unclosed box (truncated response): take what is there.
    Some(&text[start..])
}

fn parse_plain(s: &str) -> Option<f64> {
    s.replace(',', "").parse::<f64>().ok()
}

fn ratio(num: &str, den: &str) -> Option<f64> {
    let (n, d) = (parse_plain(num)?, parse_plain(den)?);
    (d != 0.0).then(|| n / d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_conventional_answer_forms() {
        let cases: &[(&str, f64)] = &[
            ("So she has 5 + 7 = 12 apples.\n#### 12", 12.0),
            ("#### 1,234", 1234.0),
            ("We get \\boxed{42}. Check: 40 + 2.", 42.0),
            ("\\boxed{\\frac{3}{4}}", 0.75),
            ("\\boxed{-\\dfrac{1}{2}}", -0.5),
            ("\\boxed{1{,}000}", 1000.0),
            ("The answer is -3.5. (We used 7 steps.)", -3.5),
            ("Answer: $1,234.50", 1234.5),
            ("It costs 3 dollars, then 10, so 13", 13.0),
            ("half is 1/2", 0.5),
            ("pages 3-5", 5.0),
            ("temperature fell to -7", -7.0),
            ("x = .25", 0.25),
            ("I think 12, 24, 1,000,000", 1_000_000.0),
        ];
        for &(text, want) in cases {
            let got = extract_final_number(text);
            assert_eq!(got, Some(want), "text: {text:?}");
        }
    }

    #[test]
    fn no_number_gives_none() {
        assert_eq!(extract_final_number("I don't know."), None);
        assert_eq!(extract_final_number(""), None);
        // Division by zero is not a number.
        assert_eq!(extract_final_number("1/0"), None);
    }

    #[test]
    fn marker_beats_later_numbers() {
        // The explicit "####" wins over numbers that follow elsewhere.
        assert_eq!(extract_final_number("#### 8\nStep 9 of 10"), Some(8.0));
        // "answer is" wins over an earlier boxless number, and a later "answer is" wins.
        assert_eq!(
            extract_final_number("answer is 3, no wait, the answer is 4 (of 9)"),
            Some(4.0)
        );
    }
}
