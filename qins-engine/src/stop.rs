//! Stop strings over a stream of text deltas.
//!
//! A stop string may arrive split across deltas ("ST" then "OP"), so text
//! that could still become the start of a stop string is held back until
//! the next delta settles it; nothing of a stop string is ever emitted.

/// What a delta released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopScan {
    /// Text that can no longer be part of a stop string.
    Emit(String),
    /// A stop string matched: the text before it, and the stop string; the
    /// stream ends here.
    Stopped { before: String, stop: String },
}

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> StopScan {
        self.held.push_str(delta);
        if let Some((at, stop)) = self.earliest_match() {
            let stop = stop.to_owned();
            let before = self.held[..at].to_owned();
            self.held.clear();
            return StopScan::Stopped { before, stop };
        }
        let keep_from = self.held.len() - self.longest_partial_suffix();
        let tail = self.held.split_off(keep_from);
        StopScan::Emit(std::mem::replace(&mut self.held, tail))
    }

    /// Releases held text at the end of the stream (no stop string came).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Where the earliest match starts and which stop string it is (the
    /// first listed, of several matching there).
    fn earliest_match(&self) -> Option<(usize, &str)> {
        self.stops
            .iter()
            .filter_map(|s| Some((self.held.find(s.as_str())?, s.as_str())))
            .min_by_key(|&(at, _)| at)
    }

    /// The length of the longest suffix of the held text that is a proper
    /// prefix of some stop string.
    fn longest_partial_suffix(&self) -> usize {
        let text = self.held.as_str();
        text.char_indices()
            .map(|(start, _)| &text[start..])
            .find(|suffix| self.stops.iter().any(|s| s.starts_with(suffix)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (Vec<String>, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut matcher = StopMatcher::new(&stops);
        let mut emitted = Vec::new();
        for delta in deltas {
            match matcher.push(delta) {
                StopScan::Emit(text) => emitted.push(text),
                StopScan::Stopped { before, stop } => {
                    emitted.push(before);
                    return (emitted, Some(stop));
                }
            }
        }
        emitted.push(matcher.finish());
        (emitted, None)
    }

    #[test]
    fn stop_split_across_deltas_is_cut_and_never_emitted() {
        let (emitted, stopped) = run(&["STOP"], &["Hello S", "T", "O", "P and more"]);
        assert_eq!(stopped.as_deref(), Some("STOP"));
        assert_eq!(emitted.concat(), "Hello ");
        // "S", "ST" and "STO" were held, not emitted early.
        assert_eq!(emitted, vec!["Hello ", "", "", ""]);
    }

    #[test]
    fn a_false_start_is_released_once_it_diverges() {
        let (emitted, stopped) = run(&["STOP"], &["ST", "ART", " x"]);
        assert!(stopped.is_none());
        assert_eq!(emitted, vec!["", "START", " x", ""]);
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        let (emitted, stopped) = run(&["</answer>"], &["42 </ans"]);
        assert!(stopped.is_none());
        assert_eq!(emitted, vec!["42 ", "</ans"]);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (emitted, stopped) = run(&["world", "lo w"], &["Hello world"]);
        assert_eq!(emitted.concat(), "Hel");
        assert_eq!(stopped.as_deref(), Some("lo w"), "the one that matched");
    }

    #[test]
    fn multibyte_text_is_held_on_character_boundaries() {
        let (emitted, stopped) = run(&["。終"], &["日本語。", "終わり"]);
        assert!(stopped.is_some());
        assert_eq!(emitted, vec!["日本語", ""]);
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let (emitted, stopped) = run(&[""], &["a", "b"]);
        assert!(stopped.is_none());
        assert_eq!(emitted, vec!["a", "b", ""]);
    }
}
