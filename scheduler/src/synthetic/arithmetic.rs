//! Arithmetic word-free problems: "a+b=" → "c", deterministic from a seed.
//!
//! Small enough that a tiny model learns it on CPU in minutes, hard enough that SFT leaves room for
//! RL to improve (carries, subtraction below zero).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One problem: the prompt text, the exact answer text.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub prompt: String,
    pub answer: String,
}

/// The characters every problem and answer are made of.
pub const ALPHABET: &str = "0123456789+-=";

/// `n` problems with operands in `0..=max_operand`; `+` and `-` (answers may be negative).
/// Different seeds give independent sets; train and eval use different seeds.
pub fn problems(seed: u64, n: usize, max_operand: u64) -> Vec<Problem> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let a = rng.random_range(0..=max_operand) as i64;
            let b = rng.random_range(0..=max_operand) as i64;
            let (op, c) = if rng.random_bool(0.5) {
                ('+', a + b)
            } else {
                ('-', a - b)
            };
            Problem {
                prompt: format!("{a}{op}{b}="),
                answer: c.to_string(),
            }
        })
        .collect()
}

/// A wrong answer near the right one (off by 1..=3, or a digit dropped), for rejected responses.
pub fn wrong_answer(p: &Problem, rng: &mut StdRng) -> String {
    let right: i64 = p.answer.parse().unwrap_or(0);
    loop {
        let delta = rng.random_range(1..=3) * if rng.random_bool(0.5) { 1 } else { -1 };
        let wrong = right + delta;
        if wrong != right {
            return wrong.to_string();
        }
    }
}

/// A malformed answer: 0 to 4 random characters of the alphabet that do not spell the right
/// answer (e.g. "2=", "+-1", ""), what an untrained policy writes.
pub fn malformed_answer(p: &Problem, rng: &mut StdRng) -> String {
    let chars: Vec<char> = ALPHABET.chars().collect();
    loop {
        let len = rng.random_range(0..=4);
        let s: String = (0..len)
            .map(|_| chars[rng.random_range(0..chars.len())])
            .collect();
        if s != p.answer {
            return s;
        }
    }
}

/// Preference pairs (prompt, chosen, rejected): the exact answer beats a near miss (3 in 4) or a
/// malformed answer (1 in 4), so that a reward model learns both correctness and format and an RL
/// policy cannot win by writing garbage the model never saw.
pub fn preference_pairs(seed: u64, n: usize, max_operand: u64) -> Vec<(String, String, String)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_9a15);
    problems(seed, n, max_operand)
        .into_iter()
        .map(|p| {
            let wrong = if rng.random_range(0..4) == 0 {
                malformed_answer(&p, &mut rng)
            } else {
                wrong_answer(&p, &mut rng)
            };
            (p.prompt, p.answer, wrong)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_deterministic_and_correct() {
        let a = problems(7, 50, 20);
        assert_eq!(a, problems(7, 50, 20));
        assert_ne!(a, problems(8, 50, 20));
        for p in &a {
            let body = p.prompt.strip_suffix('=').unwrap();
            let (x, y, op) = match body.split_once('+') {
                Some((x, y)) => (x, y, '+'),
                None => {
                    let (x, y) = body.split_once('-').unwrap();
                    (x, y, '-')
                }
            };
            let (x, y): (i64, i64) = (x.parse().unwrap(), y.parse().unwrap());
            let want = if op == '+' { x + y } else { x - y };
            assert_eq!(p.answer, want.to_string());
            assert!(p
                .prompt
                .chars()
                .chain(p.answer.chars())
                .all(|c| ALPHABET.contains(c)));
        }
    }

    #[test]
    fn rejected_answers_are_wrong() {
        for (_, chosen, rejected) in preference_pairs(3, 100, 20) {
            assert_ne!(chosen, rejected);
        }
    }
}
