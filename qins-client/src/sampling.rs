//! Sampling settings: the flags `chat` and `ask` share, and `/set` in the REPL.
//! The client checks types only (a number, a whole number): the ranges are
//! qinsd's one rule (`GenerationRequest::validate` in qins-engine), and its
//! message, naming the value and the rule, is what the user sees.

use qins_proto::v1::{GenerationDefaults, Sampling};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy [default: the model's].
    #[arg(long, value_parser = parse_temperature)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, in (0, 1] [default: the model's].
    #[arg(long, value_parser = parse_top_p)]
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens; 0 = no limit [default: the model's].
    #[arg(long, value_parser = parse_top_k)]
    pub top_k: Option<u32>,
    /// Most tokens to generate, at least 1 [default: the model's].
    #[arg(long, value_parser = parse_max_tokens)]
    pub max_tokens: Option<u32>,
    /// Seed: the same seed and prompt give the same reply.
    #[arg(long, value_parser = parse_seed)]
    pub seed: Option<u64>,
    /// Drop tokens less likely than this times the top one's, in [0, 1] [default: off].
    #[arg(long, value_parser = parse_min_p)]
    pub min_p: Option<f32>,
    /// Penalty on every token the reply already used, in [-2, 2] [default: off].
    #[arg(long, value_parser = parse_penalty)]
    pub presence_penalty: Option<f32>,
    /// Penalty per use of a token in the reply, in [-2, 2] [default: off].
    #[arg(long, value_parser = parse_penalty)]
    pub frequency_penalty: Option<f32>,
}

impl SamplingArgs {
    pub fn to_proto(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_tokens: self.max_tokens,
            seed: self.seed,
            min_p: self.min_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            ..Sampling::default()
        }
    }

    /// Applies `/set NAME VALUE`; `VALUE` may be `default` to unset.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let reset = value.eq_ignore_ascii_case("default");
        match name {
            "temperature" => {
                self.temperature = if reset {
                    None
                } else {
                    Some(parse_temperature(value)?)
                }
            }
            "top_p" | "top-p" => {
                self.top_p = if reset {
                    None
                } else {
                    Some(parse_top_p(value)?)
                }
            }
            "top_k" | "top-k" => {
                self.top_k = if reset {
                    None
                } else {
                    Some(parse_top_k(value)?)
                }
            }
            "max_tokens" | "max-tokens" => {
                self.max_tokens = if reset {
                    None
                } else {
                    Some(parse_max_tokens(value)?)
                }
            }
            "seed" => {
                self.seed = if reset {
                    None
                } else {
                    Some(parse_seed(value)?)
                }
            }
            _ => {
                return Err(format!(
                    "unknown setting '{name}'; one of: temperature, top_p, top_k, max_tokens, seed, verbose, quiet"
                ));
            }
        }
        Ok(())
    }

    /// `name=value` for each setting: the value set here, else the model's
    /// default marked as such (`default` when the model's are unknown).
    pub fn describe(&self, defaults: Option<&GenerationDefaults>) -> String {
        let mut parts = Vec::new();
        let mut show = |name: &str, set: Option<String>, default: Option<String>| {
            parts.push(match (set, default) {
                (Some(value), _) => format!("{name}={value}"),
                (None, Some(value)) => format!("{name}={value} (model default)"),
                (None, None) => format!("{name}=default"),
            });
        };
        let model = |value: &dyn Fn(&GenerationDefaults) -> String| defaults.map(value);
        show(
            "temperature",
            self.temperature.map(|v| v.to_string()),
            model(&|d| d.temperature.to_string()),
        );
        show(
            "top_p",
            self.top_p.map(|v| v.to_string()),
            model(&|d| d.top_p.to_string()),
        );
        show(
            "top_k",
            self.top_k.map(|v| v.to_string()),
            model(&|d| d.top_k.to_string()),
        );
        show(
            "max_tokens",
            self.max_tokens.map(|v| v.to_string()),
            model(&|d| d.max_tokens.to_string()),
        );
        parts.push(format!(
            "seed={}",
            self.seed.map_or("random".into(), |v| v.to_string())
        ));
        parts.join(" ")
    }
}

fn parse_float(value: &str) -> Result<f32, String> {
    let x: f32 = value
        .trim()
        .parse()
        .map_err(|_| format!("'{value}' is not a number"))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("'{value}' is not a finite number"))
    }
}

pub fn parse_temperature(value: &str) -> Result<f32, String> {
    parse_float(value).map_err(|e| format!("temperature: {e}"))
}

pub fn parse_top_p(value: &str) -> Result<f32, String> {
    parse_float(value).map_err(|e| format!("top_p: {e}"))
}

pub fn parse_min_p(value: &str) -> Result<f32, String> {
    parse_float(value).map_err(|e| format!("min_p: {e}"))
}

pub fn parse_penalty(value: &str) -> Result<f32, String> {
    parse_float(value).map_err(|e| format!("penalty: {e}"))
}

pub fn parse_top_k(value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("top_k must be a whole number >= 0 (0 = no limit), not '{value}'"))
}

pub fn parse_max_tokens(value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("max_tokens must be a whole number, not '{value}'"))
}

pub fn parse_seed(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("seed must be a whole number >= 0, not '{value}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_validates_each_setting() {
        let mut s = SamplingArgs::default();
        s.set("temperature", "0.7").unwrap();
        s.set("top_p", "0.9").unwrap();
        s.set("top-k", "40").unwrap();
        s.set("max_tokens", "128").unwrap();
        s.set("seed", "42").unwrap();
        let p = s.to_proto();
        assert_eq!(p.temperature, Some(0.7));
        assert_eq!(p.top_p, Some(0.9));
        assert_eq!(p.top_k, Some(40));
        assert_eq!(p.max_tokens, Some(128));
        assert_eq!(p.seed, Some(42));
        s.set("seed", "default").unwrap();
        assert_eq!(s.seed, None);
    }

    #[test]
    fn set_refuses_values_of_the_wrong_type_and_leaves_ranges_to_qinsd() {
        let mut s = SamplingArgs::default();
        assert!(s.set("temperature", "NaN").unwrap_err().contains("finite"));
        assert!(
            s.set("temperature", "hot")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(s.set("top_p", "most").unwrap_err().contains("top_p"));
        assert!(s.set("top_k", "-3").is_err());
        assert!(s.set("max_tokens", "1.5").is_err());
        assert!(s.set("seed", "1.5").is_err());
        assert!(
            s.set("warmth", "1")
                .unwrap_err()
                .contains("unknown setting")
        );
        // Nothing changed after the refusals.
        assert_eq!(s.to_proto(), Sampling::default());
        // In type but out of range: sent, for qinsd to refuse with its rule.
        s.set("top_p", "1.5").unwrap();
        assert_eq!(s.to_proto().top_p, Some(1.5));
        assert_eq!(parse_min_p("2"), Ok(2.0));
        assert_eq!(parse_penalty("-3"), Ok(-3.0));
        assert!(parse_min_p("most").unwrap_err().contains("min_p"));
    }

    #[test]
    fn describe_shows_the_model_defaults_for_unset_values() {
        let defaults = GenerationDefaults {
            temperature: 0.2,
            top_p: 0.9,
            top_k: 40,
            repetition_penalty: 1.0,
            max_tokens: 512,
            origin: "model card".into(),
        };
        let mut s = SamplingArgs::default();
        s.set("temperature", "0").unwrap();
        assert_eq!(
            s.describe(Some(&defaults)),
            "temperature=0 top_p=0.9 (model default) top_k=40 (model default) \
             max_tokens=512 (model default) seed=random"
        );
        assert_eq!(
            s.describe(None),
            "temperature=0 top_p=default top_k=default max_tokens=default seed=random"
        );
    }
}
