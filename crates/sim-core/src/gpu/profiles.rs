//! GPU and model profiles: data, not code.
//!
//! The built-in profiles live in `crates/sim-core/data/{gpus,models}.toml` and are
//! compiled in with `include_str!`. A scenario can override single fields of a built-in
//! profile or add new profiles with [`ProfileCatalog::extend`]; every profile is
//! deserialized with `deny_unknown_fields`, so a misspelt field is an error, not a
//! silently ignored line. Lookups by name return an error that lists the known names.
//!
//! Derived quantities (parameter counts, weight bytes, KV bytes per token, KV capacity)
//! are computed from the architecture, never typed in; `docs/gpu-model.md` gives the
//! formulas.

use super::perf::{CalibratedCoefficients, CalibrationTable, RooflineParams};
use crate::time::SimDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Built-in GPU profiles (TOML).
pub const BUILTIN_GPUS_TOML: &str = include_str!("../../data/gpus.toml");
/// Built-in model profiles (TOML).
pub const BUILTIN_MODELS_TOML: &str = include_str!("../../data/models.toml");

const GIB: f64 = (1u64 << 30) as f64;

/// One GPU type. Units are in the field names (see `data/gpus.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuProfile {
    /// Profile name (the table key); filled in by the catalog.
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where the hardware figures come from.
    #[serde(default)]
    pub spec_source: String,
    /// Device memory visible to the runtime, GiB.
    pub memory_gib: f64,
    /// Peak memory bandwidth, TB/s (10^12 bytes/s).
    pub hbm_tbps: f64,
    /// Dense BF16 tensor peak, TFLOP/s.
    pub bf16_tflops: f64,
    /// Dense FP8 tensor peak, TFLOP/s (absent when the GPU has no FP8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp8_tflops: Option<f64>,
    /// GPU-to-GPU bandwidth per direction, GB/s.
    pub interconnect_gbps: f64,
    /// Default on-demand price per GPU-hour, USD.
    pub price_usd_per_hour: f64,
    /// Where the default price comes from.
    #[serde(default)]
    pub price_source: String,
    pub idle_watts: f64,
    pub busy_watts: f64,
    /// Node boot time until the GPU is usable (model loading not included).
    pub boot_time: SimDuration,
}

impl GpuProfile {
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_gib * GIB).round() as u64
    }
    /// Memory bandwidth in bytes per second.
    pub fn memory_bandwidth(&self) -> f64 {
        self.hbm_tbps * 1e12
    }
    /// Dense tensor peak in FLOP/s for weights of `dtype_bytes` bytes: FP8 peak for
    /// 1-byte weights when the GPU has it, otherwise the BF16 peak.
    pub fn peak_flops(&self, dtype_bytes: u32) -> f64 {
        match (dtype_bytes, self.fp8_tflops) {
            (1, Some(fp8)) => fp8 * 1e12,
            _ => self.bf16_tflops * 1e12,
        }
    }
    /// GPU-to-GPU bandwidth per direction, bytes per second.
    pub fn interconnect_bandwidth(&self) -> f64 {
        self.interconnect_gbps * 1e9
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("memory_gib", self.memory_gib),
            ("hbm_tbps", self.hbm_tbps),
            ("bf16_tflops", self.bf16_tflops),
            ("interconnect_gbps", self.interconnect_gbps),
        ];
        for (field, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!(
                    "GPU profile '{}': {field} must be a positive number, got {v}",
                    self.name
                ));
            }
        }
        if let Some(fp8) = self.fp8_tflops
            && !(fp8.is_finite() && fp8 > 0.0)
        {
            return Err(format!(
                "GPU profile '{}': fp8_tflops must be a positive number, got {fp8}",
                self.name
            ));
        }
        let non_negative = [
            ("price_usd_per_hour", self.price_usd_per_hour),
            ("idle_watts", self.idle_watts),
            ("busy_watts", self.busy_watts),
        ];
        for (field, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "GPU profile '{}': {field} must be a number >= 0, got {v}",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

/// Feed-forward block shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// Gated (SwiGLU): gate, up and down projections, 3 matrices.
    #[default]
    Gated,
    /// Plain (GELU): up and down projections, 2 matrices.
    Plain,
}

fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}
fn is_default_mlp(v: &MlpKind) -> bool {
    *v == MlpKind::Gated
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// One model architecture. Units are in the field names (see `data/models.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelProfile {
    /// Profile name (the table key); filled in by the catalog.
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where the architecture figures come from.
    #[serde(default)]
    pub source: String,
    pub layers: u32,
    pub hidden_size: u32,
    /// Attention (query) heads.
    pub heads: u32,
    /// Key/value heads (= heads without grouped-query attention).
    pub kv_heads: u32,
    pub head_dim: u32,
    pub vocab_size: u32,
    /// Feed-forward inner size (per expert for mixtures of experts).
    pub intermediate_size: u32,
    /// Bytes per weight and per KV-cache element (2 for BF16/FP16, 1 for FP8).
    pub dtype_bytes: u32,
    /// Longest context (prompt + output tokens) the model accepts.
    pub context_limit: u32,
    /// Experts per MoE layer (1 for a dense model).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub experts: u32,
    /// Experts each token is routed to.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub experts_per_token: u32,
    #[serde(default, skip_serializing_if = "is_default_mlp")]
    pub mlp: MlpKind,
    /// Input embedding and LM head share one matrix.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tied_embeddings: bool,
}

impl ModelProfile {
    fn attention_params_per_layer(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = self.heads as u64 * self.head_dim as u64;
        let kv = self.kv_heads as u64 * self.head_dim as u64;
        2 * h * q + 2 * h * kv
    }
    /// Parameters of one expert's feed-forward block.
    pub fn mlp_params_per_expert(&self) -> u64 {
        let matrices = match self.mlp {
            MlpKind::Gated => 3,
            MlpKind::Plain => 2,
        };
        matrices * self.hidden_size as u64 * self.intermediate_size as u64
    }
    fn router_params_per_layer(&self) -> u64 {
        if self.experts > 1 {
            self.hidden_size as u64 * self.experts as u64
        } else {
            0
        }
    }
    fn embedding_params(&self) -> u64 {
        let matrices = if self.tied_embeddings { 1 } else { 2 };
        matrices * self.vocab_size as u64 * self.hidden_size as u64
    }
    /// All parameters (every expert), excluding norms and biases (< 0.1%).
    pub fn total_params(&self) -> u64 {
        let per_layer = self.attention_params_per_layer()
            + self.experts as u64 * self.mlp_params_per_expert()
            + self.router_params_per_layer();
        self.layers as u64 * per_layer + self.embedding_params()
    }
    /// Parameters one token passes through (routed experts only).
    pub fn active_params(&self) -> u64 {
        let per_layer = self.attention_params_per_layer()
            + self.experts_per_token as u64 * self.mlp_params_per_expert()
            + self.router_params_per_layer();
        self.layers as u64 * per_layer + self.embedding_params()
    }
    /// Bytes of all weights.
    pub fn weight_bytes(&self) -> u64 {
        self.total_params() * self.dtype_bytes as u64
    }
    /// Bytes of expert feed-forward weights (0 for a dense model); the part of
    /// [`Self::weight_bytes`] that a small batch reads only partly.
    pub fn expert_weight_bytes(&self) -> u64 {
        if self.experts > 1 {
            self.layers as u64
                * self.experts as u64
                * self.mlp_params_per_expert()
                * self.dtype_bytes as u64
        } else {
            0
        }
    }
    /// KV-cache bytes per token: 2 (K and V) * layers * kv_heads * head_dim * dtype.
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * self.layers as u64
            * self.kv_heads as u64
            * self.head_dim as u64
            * self.dtype_bytes as u64
    }
    /// Whether the model can be split over `tp` GPUs as vLLM splits it: the attention
    /// heads must divide evenly (`heads % tp == 0`), and the KV heads either divide
    /// evenly too (`kv_heads % tp == 0`) or are replicated, one per GPU, when `tp` is
    /// a multiple of them (`tp % kv_heads == 0`). The error names the degrees that work.
    pub fn check_tp(&self, tp: u32) -> Result<(), String> {
        let ok = |t: u32| {
            t >= 1
                && self.heads.is_multiple_of(t)
                && (self.kv_heads.is_multiple_of(t) || t.is_multiple_of(self.kv_heads))
        };
        if ok(tp) {
            return Ok(());
        }
        let valid: Vec<String> = (1..=self.heads.min(64))
            .filter(|&t| ok(t))
            .map(|t| t.to_string())
            .collect();
        let why = if tp == 0 || !self.heads.is_multiple_of(tp) {
            format!(
                "tp = {tp} does not divide model '{}''s {} attention heads (vLLM requires heads % tp == 0)",
                self.name, self.heads
            )
        } else {
            format!(
                "tp = {tp} neither divides model '{}''s {} KV heads nor is a multiple of them (KV heads are split over the GPUs, or replicated when tp is a multiple of them)",
                self.name, self.kv_heads
            )
        };
        Err(format!("{why}; expected one of {}", valid.join(", ")))
    }
    /// KV-cache bytes per token over the `tp` GPUs of a replica: the KV heads are split
    /// over the GPUs, or, when `tp` exceeds them, replicated so that each GPU holds
    /// one: `kv_bytes_per_token x max(tp, kv_heads) / kv_heads`.
    pub fn kv_bytes_per_token_at(&self, tp: u32) -> u64 {
        let copies = (tp.max(self.kv_heads) / self.kv_heads.max(1)).max(1) as u64;
        self.kv_bytes_per_token() * copies
    }
    /// Matrix-multiply FLOPs per token: 2 per active weight, counting the LM head but
    /// not the input embedding (a table lookup).
    pub fn forward_flops_per_token(&self) -> f64 {
        let lookup = if self.tied_embeddings {
            0
        } else {
            self.vocab_size as u64 * self.hidden_size as u64
        };
        2.0 * (self.active_params() - lookup) as f64
    }
    /// Attention FLOPs per (query token, attended key token) pair over all layers:
    /// QK^T and attention-times-V, 2 FLOPs per multiply-add each.
    pub fn attention_flops_per_pair(&self) -> f64 {
        4.0 * self.layers as f64 * self.heads as f64 * self.head_dim as f64
    }

    fn validate(&self) -> Result<(), String> {
        let fields = [
            ("layers", self.layers),
            ("hidden_size", self.hidden_size),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("dtype_bytes", self.dtype_bytes),
            ("context_limit", self.context_limit),
            ("experts", self.experts),
            ("experts_per_token", self.experts_per_token),
        ];
        for (field, v) in fields {
            if v == 0 {
                return Err(format!(
                    "model profile '{}': {field} must be at least 1",
                    self.name
                ));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "model profile '{}': heads ({}) must be a multiple of kv_heads ({})",
                self.name, self.heads, self.kv_heads
            ));
        }
        if self.experts_per_token > self.experts {
            return Err(format!(
                "model profile '{}': experts_per_token ({}) exceeds experts ({})",
                self.name, self.experts_per_token, self.experts
            ));
        }
        Ok(())
    }
}

/// Profile changes a scenario asks for: each entry either patches fields of a known
/// profile (only the fields given change) or, for a new name, defines a complete
/// profile. `calibrated` adds or replaces fitted coefficients; `roofline` replaces the
/// roofline constants (fields not given keep their defaults).
///
/// In a scenario's TOML:
/// ```toml
/// [profiles.gpus.h100-80gb]
/// price_usd_per_hour = 2.1
/// [profiles.models.my-13b]
/// layers = 40
/// # ... every required field
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileOverrides {
    #[serde(default)]
    pub gpus: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub models: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub calibrated: Vec<CalibratedCoefficients>,
    #[serde(default)]
    pub roofline: Option<RooflineParams>,
}

/// Every known GPU and model profile, the fitted coefficients for the calibrated
/// performance model, and the roofline constants.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileCatalog {
    gpus: BTreeMap<String, GpuProfile>,
    models: BTreeMap<String, ModelProfile>,
    /// Fitted coefficients of the calibrated performance model.
    pub calibration: CalibrationTable,
    /// Constants of the roofline performance model.
    pub roofline: RooflineParams,
}

impl ProfileCatalog {
    /// The built-in profiles and the shipped calibration.
    ///
    /// # Panics
    /// Never for the shipped data (a unit test parses it); a broken edit of the data
    /// files fails that test.
    pub fn builtin() -> Self {
        match Self::try_builtin() {
            Ok(c) => c,
            Err(e) => panic!("built-in profile data is invalid: {e}"),
        }
    }

    /// The built-in profiles, reporting (rather than panicking on) bad data.
    pub fn try_builtin() -> Result<Self, String> {
        let gpus = parse_table::<GpuProfile>(BUILTIN_GPUS_TOML, "data/gpus.toml")?;
        let models = parse_table::<ModelProfile>(BUILTIN_MODELS_TOML, "data/models.toml")?;
        let mut catalog = ProfileCatalog {
            gpus: BTreeMap::new(),
            models: BTreeMap::new(),
            calibration: CalibrationTable::builtin()?,
            roofline: RooflineParams::default(),
        };
        for (name, mut g) in gpus {
            g.name = name.clone();
            g.validate()?;
            catalog.gpus.insert(name, g);
        }
        for (name, mut m) in models {
            m.name = name.clone();
            m.validate()?;
            catalog.models.insert(name, m);
        }
        Ok(catalog)
    }

    /// Applies a scenario's overrides (see [`ProfileOverrides`]).
    pub fn extend(&mut self, overrides: ProfileOverrides) -> Result<(), String> {
        self.extend_keyed(overrides).map_err(|(_, m)| m)
    }

    /// As [`ProfileCatalog::extend`], the error paired with the key (under
    /// `profiles`) it is about: `gpus.NAME.FIELD` where the message names a field the
    /// override wrote, else `gpus.NAME` (likewise `models.NAME`, `roofline`).
    pub fn extend_keyed(&mut self, overrides: ProfileOverrides) -> Result<(), (String, String)> {
        // The field of `patch` (what the user wrote) that `msg` names, if any.
        fn key_of(table: &str, written: &[String], msg: &str) -> String {
            let named = written.iter().find(|k| {
                msg.match_indices(k.as_str()).any(|(at, _)| {
                    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
                    !msg[..at].chars().next_back().is_some_and(word)
                        && !msg[at + k.len()..].chars().next().is_some_and(word)
                })
            });
            match named {
                Some(k) => format!("{table}.{k}"),
                None => table.to_string(),
            }
        }
        for (name, patch) in overrides.gpus {
            let table = format!("gpus.{name}");
            let written: Vec<String> = patch.keys().cloned().collect();
            let keyed = |m: String| (key_of(&table, &written, &m), m);
            let mut g: GpuProfile =
                merge(self.gpus.get(&name), patch, "GPU", &name).map_err(keyed)?;
            g.name = name.clone();
            g.validate().map_err(keyed)?;
            self.gpus.insert(name, g);
        }
        for (name, patch) in overrides.models {
            let table = format!("models.{name}");
            let written: Vec<String> = patch.keys().cloned().collect();
            let keyed = |m: String| (key_of(&table, &written, &m), m);
            let mut m: ModelProfile =
                merge(self.models.get(&name), patch, "model", &name).map_err(keyed)?;
            m.name = name.clone();
            m.validate().map_err(keyed)?;
            self.models.insert(name, m);
        }
        for c in overrides.calibrated {
            self.calibration.upsert(c);
        }
        if let Some(r) = overrides.roofline {
            const FIELDS: [&str; 6] = [
                "compute_efficiency",
                "memory_efficiency",
                "non_overlap",
                "overhead_ms",
                "allreduce_latency_us",
                "interconnect_efficiency",
            ];
            let written: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
            r.validate()
                .map_err(|m| (key_of("roofline", &written, &m), m))?;
            self.roofline = r;
        }
        Ok(())
    }

    /// The GPU profile called `name`.
    pub fn gpu(&self, name: &str) -> Result<&GpuProfile, String> {
        self.gpus.get(name).ok_or_else(|| {
            format!(
                "unknown GPU profile '{name}'; known: {}",
                join_names(self.gpus.keys())
            )
        })
    }

    /// The model profile called `name`.
    pub fn model(&self, name: &str) -> Result<&ModelProfile, String> {
        self.models.get(name).ok_or_else(|| {
            format!(
                "unknown model profile '{name}'; known: {}",
                join_names(self.models.keys())
            )
        })
    }

    /// GPU profile names, sorted.
    pub fn gpu_names(&self) -> impl Iterator<Item = &str> {
        self.gpus.keys().map(String::as_str)
    }

    /// Model profile names, sorted.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

impl Default for ProfileCatalog {
    fn default() -> Self {
        Self::builtin()
    }
}

fn join_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names.map(String::as_str).collect::<Vec<_>>().join(", ")
}

fn parse_table<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<BTreeMap<String, T>, String> {
    toml::from_str::<BTreeMap<String, T>>(text).map_err(|e| format!("{file}: {e}"))
}

/// Patches `base` (if any) with the fields in `patch` and deserializes the result, so
/// unknown fields and wrong types are reported with the profile's name.
fn merge<T: Serialize + serde::de::DeserializeOwned>(
    base: Option<&T>,
    patch: serde_json::Map<String, serde_json::Value>,
    kind: &str,
    name: &str,
) -> Result<T, String> {
    let mut fields = match base {
        Some(b) => match serde_json::to_value(b) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) | Err(_) => serde_json::Map::new(),
        },
        None => serde_json::Map::new(),
    };
    for (k, v) in patch {
        fields.insert(k, v);
    }
    serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| {
        let what = if base.is_some() { "override of" } else { "new" };
        format!("{what} {kind} profile '{name}': {e}")
    })
}

/// KV-cache capacity in tokens of a replica: `(tp * GPU memory * mem_utilization -
/// weight bytes) / KV bytes per token` (at `tp`: replicated KV heads count once per
/// GPU, see [`ModelProfile::kv_bytes_per_token_at`]), rounded down. Errors when the
/// weights do not fit, naming the numbers.
pub fn kv_capacity_tokens(
    model: &ModelProfile,
    gpu: &GpuProfile,
    tp: u32,
    mem_utilization: f64,
) -> Result<u64, String> {
    if tp == 0 {
        return Err("tensor parallelism must be at least 1".to_string());
    }
    if !(mem_utilization > 0.0 && mem_utilization <= 1.0) {
        return Err(format!(
            "memory utilisation must be in (0, 1], got {mem_utilization}"
        ));
    }
    let usable = tp as f64 * gpu.memory_bytes() as f64 * mem_utilization;
    let weights = model.weight_bytes() as f64;
    if usable <= weights {
        return Err(format!(
            "model '{}' does not fit: weights need {:.1} GB but {} x {} at {:.0}% memory \
             utilisation give {:.1} GB; use more GPUs (tensor parallelism) or a larger GPU",
            model.name,
            weights / 1e9,
            tp,
            gpu.name,
            mem_utilization * 100.0,
            usable / 1e9
        ));
    }
    Ok(((usable - weights) / model.kv_bytes_per_token_at(tp) as f64).floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> ProfileCatalog {
        ProfileCatalog::try_builtin().expect("built-in data parses")
    }

    #[test]
    fn builtin_has_required_profiles() {
        let c = catalog();
        for g in [
            "a100-40gb",
            "a100-80gb",
            "h100-80gb",
            "h100-80gb-pcie",
            "h200",
            "l40s",
        ] {
            let p = c.gpu(g).unwrap();
            assert_eq!(p.name, g);
            assert!(!p.price_source.is_empty(), "{g} names its price source");
            assert!(!p.spec_source.is_empty(), "{g} names its spec source");
        }
        for m in [
            "llama-2-7b",
            "llama-2-70b",
            "llama-3-8b",
            "llama-3-70b",
            "mixtral-8x7b",
        ] {
            assert_eq!(c.model(m).unwrap().name, m);
        }
        // Datasheet figures from the brief.
        let a = c.gpu("a100-80gb").unwrap();
        assert_eq!(a.peak_flops(2), 312e12);
        assert!((a.memory_bandwidth() - 2.039e12).abs() < 1.0);
        assert_eq!(
            a.peak_flops(1),
            312e12,
            "no FP8 on A100: falls back to BF16"
        );
        let h = c.gpu("h100-80gb").unwrap();
        assert_eq!(h.peak_flops(2), 989e12);
        assert_eq!(h.peak_flops(1), 1979e12);
        assert!((h.memory_bandwidth() - 3.35e12).abs() < 1.0);
    }

    #[test]
    fn derived_sizes_match_hand_computation() {
        let c = catalog();
        let l70 = c.model("llama-2-70b").unwrap();
        assert_eq!(l70.kv_bytes_per_token(), 2 * 80 * 8 * 128 * 2);
        assert_eq!(l70.kv_bytes_per_token(), 327_680);
        // Per layer: Q,O 2*8192*8192 + K,V 2*8192*1024 + MLP 3*8192*28672.
        let per_layer = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672u64;
        assert_eq!(per_layer, 855_638_016);
        let total = 80 * per_layer + 2 * 32000 * 8192;
        assert_eq!(l70.total_params(), total);
        assert_eq!(total, 68_975_329_280); // the published "69B"
        assert_eq!(l70.weight_bytes(), 2 * total);

        let l7 = c.model("llama-2-7b").unwrap();
        assert_eq!(l7.kv_bytes_per_token(), 2 * 32 * 32 * 128 * 2); // 524,288
        assert_eq!(l7.total_params(), 6_738_149_376); // the published 6.74B

        let l3 = c.model("llama-3-8b").unwrap();
        assert_eq!(l3.kv_bytes_per_token(), 131_072);
        assert_eq!(l3.total_params(), 8_029_995_008); // the published 8.03B
        assert_eq!(
            c.model("llama-3-70b").unwrap().total_params(),
            70_552_387_584
        );

        let mx = c.model("mixtral-8x7b").unwrap();
        // 46.7B total, 12.9B active.
        assert_eq!(mx.total_params(), 46_702_526_464);
        assert_eq!(mx.active_params(), 12_879_659_008);
        assert_eq!(mx.expert_weight_bytes(), 32 * 8 * 3 * 4096 * 14336 * 2);
        assert_eq!(mx.kv_bytes_per_token(), 131_072);

        let bloom = c.model("bloom-176b").unwrap();
        // 70 * (4*h^2 + 8*h^2) + vocab*h (tied) = 176.2B, the published 176B.
        assert_eq!(
            bloom.total_params(),
            70 * 12 * 14336 * 14336 + 250_880 * 14336
        );
    }

    #[test]
    fn kv_capacity_matches_hand_computation() {
        let c = catalog();
        let l70 = c.model("llama-2-70b").unwrap();
        let a100 = c.gpu("a100-80gb").unwrap();
        // 2 * 80 GiB * 0.9 = 154,618,822,656 B; minus 137,950,658,560 B of weights
        // = 16,668,164,096 B; / 327,680 B per token = 50,867.0 tokens.
        let cap = kv_capacity_tokens(l70, a100, 2, 0.9).unwrap();
        assert_eq!(cap, 50_867);
        let err = kv_capacity_tokens(l70, a100, 1, 0.9).unwrap_err();
        assert!(err.contains("138.0 GB") && err.contains("77.3 GB"), "{err}");
        assert!(
            err.contains("llama-2-70b") && err.contains("a100-80gb"),
            "{err}"
        );
        // More GPUs or more memory: more KV.
        assert!(kv_capacity_tokens(l70, a100, 4, 0.9).unwrap() > cap);
        let l3 = c.model("llama-3-8b").unwrap();
        let h100 = c.gpu("h100-80gb").unwrap();
        let one = kv_capacity_tokens(l3, h100, 1, 0.9).unwrap();
        let expected = ((79.6 * GIB).round() * 0.9 - 16_059_990_016.0) / 131_072.0;
        assert_eq!(one, expected.floor() as u64);
        assert!(kv_capacity_tokens(l3, h100, 0, 0.9).is_err());
        assert!(kv_capacity_tokens(l3, h100, 1, 1.5).is_err());
        assert!(kv_capacity_tokens(l3, h100, 1, 0.0).is_err());
    }

    #[test]
    fn tensor_parallel_degrees_must_split_the_heads() {
        let c = catalog();
        // Llama-3-8B: 32 heads, 8 KV heads. 1-8 split both; 16 and 32 split the heads
        // and replicate the KV heads (2 and 4 copies); 3, 6, 12 do not divide 32.
        let l3 = c.model("llama-3-8b").unwrap();
        let ok: Vec<u32> = (1..=64).filter(|&t| l3.check_tp(t).is_ok()).collect();
        assert_eq!(ok, vec![1, 2, 4, 8, 16, 32]);
        let e = l3.check_tp(3).unwrap_err();
        assert!(
            e.contains("32 attention heads") && e.contains("expected one of 1, 2, 4, 8, 16, 32"),
            "{e}"
        );
        // A model whose KV heads do not divide into its head split: 24 heads, 6 KV
        // heads: tp 4 divides 24 but neither divides 6 nor is a multiple of it.
        let mut m = l3.clone();
        m.heads = 24;
        m.kv_heads = 6;
        let e = m.check_tp(4).unwrap_err();
        assert!(
            e.contains("6 KV heads") && e.contains("expected one of 1, 2, 3, 6, 12, 24"),
            "{e}"
        );
        assert!(m.check_tp(12).is_ok());
        // Replicated KV heads cost memory: at tp 16, 2 copies of 131,072 B per token.
        assert_eq!(l3.kv_bytes_per_token_at(8), 131_072);
        assert_eq!(l3.kv_bytes_per_token_at(16), 262_144);
        let h100 = c.gpu("h100-80gb").unwrap();
        let at16 = kv_capacity_tokens(l3, h100, 16, 0.9).unwrap();
        let expected = (16.0 * (79.6 * GIB).round() * 0.9 - 16_059_990_016.0) / 262_144.0;
        assert_eq!(at16, expected.floor() as u64);
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let c = catalog();
        let e = c.gpu("h100").unwrap_err();
        assert!(e.contains("unknown GPU profile 'h100'"), "{e}");
        assert!(e.contains("h100-80gb, h100-80gb-pcie, h200"), "{e}");
        let e = c.model("llama-4").unwrap_err();
        assert!(
            e.contains("llama-2-70b") && e.contains("mixtral-8x7b"),
            "{e}"
        );
    }

    #[test]
    fn overrides_patch_and_extend() {
        let mut c = catalog();
        let text = r#"
            [gpus.h100-80gb]
            price_usd_per_hour = 2.1
            [gpus.b200]
            memory_gib = 180.0
            hbm_tbps = 8.0
            bf16_tflops = 2250.0
            interconnect_gbps = 900.0
            price_usd_per_hour = 6.0
            idle_watts = 100.0
            busy_watts = 1000.0
            boot_time = "6m"
            [models.llama-2-70b]
            context_limit = 8192
        "#;
        let o: ProfileOverrides = toml::from_str(text).unwrap();
        c.extend(o).unwrap();
        let h = c.gpu("h100-80gb").unwrap();
        assert_eq!(h.price_usd_per_hour, 2.1);
        assert_eq!(
            h.bf16_tflops, 989.0,
            "other fields keep their built-in values"
        );
        assert_eq!(h.boot_time, SimDuration::from_secs(300));
        let b = c.gpu("b200").unwrap();
        assert_eq!(b.name, "b200");
        assert_eq!(b.boot_time, SimDuration::from_secs(360));
        assert_eq!(c.model("llama-2-70b").unwrap().context_limit, 8192);
        assert_eq!(c.model("llama-2-70b").unwrap().layers, 80);
    }

    #[test]
    fn overrides_reject_typos_and_incomplete_profiles() {
        let mut c = catalog();
        let o: ProfileOverrides =
            toml::from_str("[gpus.h100-80gb]\nprice_per_hour = 2.1\n").unwrap();
        let e = c.extend(o).unwrap_err();
        assert!(
            e.contains("h100-80gb") && e.contains("price_per_hour"),
            "{e}"
        );
        let o: ProfileOverrides = toml::from_str("[gpus.new-gpu]\nmemory_gib = 10.0\n").unwrap();
        let e = c.extend(o).unwrap_err();
        assert!(e.contains("new GPU profile 'new-gpu'"), "{e}");
        assert!(e.contains("missing field"), "{e}");
        let o: ProfileOverrides = toml::from_str("[models.llama-2-70b]\nkv_heads = 7\n").unwrap();
        let e = c.extend(o).unwrap_err();
        assert!(e.contains("multiple of kv_heads"), "{e}");
        assert!(toml::from_str::<ProfileOverrides>("[gpu.x]\na = 1\n").is_err());
    }
}
