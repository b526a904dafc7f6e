//! Tasks realign generates itself, so the quickstart needs no downloads: data and a tokenizer.

pub mod arithmetic;
pub mod char_tokenizer;
