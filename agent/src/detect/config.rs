//! Detector configuration (TOML, `--detect-config FILE`). Every threshold
//! has a default (README, "Flags"); unknown keys and out-of-range values are
//! rejected at start with an error naming the key.

use serde::Deserialize;

/// `[duplicate_call]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Duplicate {
    /// Fire at all.
    pub enabled: bool,
    /// Window, seconds.
    pub window_s: u64,
    /// Calls in the window that make a duplicate.
    pub min_count: u32,
}
impl Default for Duplicate {
    fn default() -> Self {
        Self {
            enabled: true,
            window_s: 60,
            min_count: 2,
        }
    }
}

/// `[loop]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Loop {
    /// Fire at all.
    pub enabled: bool,
    /// Longest cycle looked for.
    pub max_period: usize,
    /// Repetitions of the cycle.
    pub min_repeats: usize,
}
impl Default for Loop {
    fn default() -> Self {
        Self {
            enabled: true,
            max_period: 8,
            min_repeats: 3,
        }
    }
}

/// `[retry_storm]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryStorm {
    /// Fire at all.
    pub enabled: bool,
    /// Failures of the same call.
    pub min_failures: u32,
    /// Window, seconds.
    pub window_s: u64,
}
impl Default for RetryStorm {
    fn default() -> Self {
        Self {
            enabled: true,
            min_failures: 5,
            window_s: 60,
        }
    }
}

/// `[rate_spike]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateSpike {
    /// Fire at all.
    pub enabled: bool,
    /// Bucket, seconds (the rate is calls per bucket).
    pub bucket_s: f64,
    /// Buckets of warm-up during which nothing fires.
    pub warmup_buckets: u32,
    /// EWMA smoothing.
    pub alpha: f64,
    /// Deviations above the mean that make a spike.
    pub deviations: f64,
    /// And at least this many calls in the bucket.
    pub min_calls: u32,
}
impl Default for RateSpike {
    fn default() -> Self {
        Self {
            enabled: true,
            bucket_s: 60.0,
            warmup_buckets: 10,
            alpha: 0.3,
            deviations: 4.0,
            min_calls: 30,
        }
    }
}

/// `[first_seen]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirstSeen {
    /// Fire at all.
    pub enabled: bool,
    /// Learning period, seconds from the agent's first message.
    pub learning_s: f64,
}
impl Default for FirstSeen {
    fn default() -> Self {
        Self {
            enabled: true,
            learning_s: 86400.0,
        }
    }
}

/// `[error_burst]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorBurst {
    /// Fire at all.
    pub enabled: bool,
    /// Window, seconds.
    pub window_s: u64,
    /// Calls in the window before the ratio counts.
    pub min_calls: u32,
    /// Error ratio that fires (0 < ratio ≤ 1).
    pub ratio: f64,
}
impl Default for ErrorBurst {
    fn default() -> Self {
        Self {
            enabled: true,
            window_s: 60,
            min_calls: 5,
            ratio: 0.5,
        }
    }
}

/// `[large_response]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LargeResponse {
    /// Fire at all.
    pub enabled: bool,
    /// Any response above this many bytes.
    pub absolute_bytes: u64,
    /// Or this many times the tool's own mean size…
    pub factor: f64,
    /// …once the tool has this many samples.
    pub min_samples: u32,
}
impl Default for LargeResponse {
    fn default() -> Self {
        Self {
            enabled: true,
            absolute_bytes: 1 << 20,
            factor: 10.0,
            min_samples: 5,
        }
    }
}

/// A switch-only detector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Switch {
    /// Fire at all.
    pub enabled: bool,
}
impl Default for Switch {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[limits]`: bounds on detector state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Keys (identity/session/tool combinations) per detector before the
    /// oldest is evicted (counted).
    pub max_keys: usize,
}
impl Default for Limits {
    fn default() -> Self {
        Self { max_keys: 10_000 }
    }
}

/// The whole detector configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// duplicate_call.
    pub duplicate_call: Duplicate,
    /// loop.
    #[serde(rename = "loop")]
    pub loop_: Loop,
    /// retry_storm.
    pub retry_storm: RetryStorm,
    /// rate_spike.
    pub rate_spike: RateSpike,
    /// first_seen.
    pub first_seen: FirstSeen,
    /// tool_definition_drift.
    pub tool_definition_drift: Switch,
    /// error_burst.
    pub error_burst: ErrorBurst,
    /// large_response.
    pub large_response: LargeResponse,
    /// secret_in_payload.
    pub secret_in_payload: Switch,
    /// injection_marker.
    pub injection_marker: Switch,
    /// policy_violation (needs `--policy`).
    pub policy_violation: Switch,
    /// header_mismatch (HTTP, 2026-07-28 `Mcp-Method`/`Mcp-Name`).
    pub header_mismatch: Switch,
    /// State bounds.
    pub limits: Limits,
    /// The TOML this came from (recorded in the audit trail and captures).
    #[serde(skip)]
    pub raw: String,
}

/// A configuration error naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or a key the agent does not know.
    #[error("{0}")]
    Parse(String),
    /// A value out of range.
    #[error("`{key}` {why}, got {got}")]
    Range {
        /// The key.
        key: &'static str,
        /// What is allowed.
        why: &'static str,
        /// The value.
        got: String,
    },
}

impl DetectConfig {
    /// Parses and validates TOML.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut c: DetectConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        c.raw = text.to_owned();
        Ok(c)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, bool, &'static str, String); 11] = [
            (
                "duplicate_call.min_count",
                self.duplicate_call.min_count >= 2,
                "must be at least 2",
                self.duplicate_call.min_count.to_string(),
            ),
            (
                "duplicate_call.window_s",
                self.duplicate_call.window_s > 0,
                "must be positive",
                self.duplicate_call.window_s.to_string(),
            ),
            (
                "loop.max_period",
                (1..=64).contains(&self.loop_.max_period),
                "must be 1..=64",
                self.loop_.max_period.to_string(),
            ),
            (
                "loop.min_repeats",
                self.loop_.min_repeats >= 2,
                "must be at least 2",
                self.loop_.min_repeats.to_string(),
            ),
            (
                "retry_storm.min_failures",
                self.retry_storm.min_failures >= 2,
                "must be at least 2",
                self.retry_storm.min_failures.to_string(),
            ),
            (
                "rate_spike.bucket_s",
                self.rate_spike.bucket_s > 0.0,
                "must be positive",
                self.rate_spike.bucket_s.to_string(),
            ),
            (
                "rate_spike.alpha",
                self.rate_spike.alpha > 0.0 && self.rate_spike.alpha <= 1.0,
                "must be in (0, 1]",
                self.rate_spike.alpha.to_string(),
            ),
            (
                "error_burst.ratio",
                self.error_burst.ratio > 0.0 && self.error_burst.ratio <= 1.0,
                "must be in (0, 1]",
                self.error_burst.ratio.to_string(),
            ),
            (
                "large_response.factor",
                self.large_response.factor > 1.0,
                "must be above 1",
                self.large_response.factor.to_string(),
            ),
            (
                "first_seen.learning_s",
                self.first_seen.learning_s >= 0.0,
                "must not be negative",
                self.first_seen.learning_s.to_string(),
            ),
            (
                "limits.max_keys",
                self.limits.max_keys >= 16,
                "must be at least 16",
                self.limits.max_keys.to_string(),
            ),
        ];
        for (key, ok, why, got) in checks {
            if !ok {
                return Err(ConfigError::Range { key, why, got });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = DetectConfig::from_toml("").unwrap();
        assert_eq!(c.duplicate_call.window_s, 60);
        let e = DetectConfig::from_toml("[error_burst]\nratio = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`error_burst.ratio` must be in (0, 1], got 1.5"),
            "{e}"
        );
        let e = DetectConfig::from_toml("[duplicate_call]\nwindow = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `window`"), "{e}");
        let e = DetectConfig::from_toml("[dupliate_call]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dupliate_call"), "{e}");
    }
}
