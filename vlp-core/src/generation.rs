//! Model-agnostic, batched text generation with incremental (KV-cached) decoding.
//!
//! A model plugs in through [`IncrementalDecoder`]: it is fed the tokens it has not seen yet and
//! returns the next-token logits of the last position; it keeps its own cache and reorders it on
//! demand (beam search). [`generate`] drives it with one of three strategies, chosen as Hugging Face
//! `generate` chooses them:
//!
//! - greedy search (`num_beams == 1`, `do_sample == false`),
//! - multinomial sampling (`num_beams == 1`, `do_sample == true`) with temperature, top-k and top-p,
//! - beam search (`num_beams > 1`, `do_sample == false`).
//!
//! All three mirror transformers **4.25.1** (`greedy_search`, `sample`, `beam_search` +
//! `BeamSearchScorer` + `BeamHypotheses`), including the logits processors and their order:
//! repetition penalty, no-repeat-ngram, min length, prefix constraint; then (sampling only)
//! temperature, top-k, top-p. Beam search applies the processors to log-probabilities (after
//! `log_softmax`), greedy search and sampling to the raw logits, as 4.25 does. Lengths
//! (`max_length`, `min_length`) count the prompt, as in HF. See `docs/generation.md` for the
//! details and for where transformers 5.x differs.
//!
//! ```no_run
//! use vlp_core::generation::{generate, GenerationConfig, Trie};
//! # fn demo(decoder: &mut dyn vlp_core::generation::IncrementalDecoder, prompt: &tch::Tensor) -> vlp_core::Result<()> {
//! let cfg = GenerationConfig { num_beams: 3, max_length: 30, min_length: 10, eos_token_id: 102, ..Default::default() };
//! let out = generate(decoder, prompt, &cfg, None, None)?;
//! // constrained to a list of answers (each ending with eos):
//! let trie = Trie::new(&[vec![2001, 102], vec![2002, 2003, 102]]);
//! let out = generate(decoder, prompt, &cfg, Some(&trie), None)?;
//! # Ok(()) }
//! ```
use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::{Result, VlpError};

/// A decoder that produces next-token logits; implementations keep their own KV cache.
///
/// [`generate`] calls [`step`](IncrementalDecoder::step) first with the whole prompt, then with
/// one new token per row; for beam search it first calls [`reorder`](IncrementalDecoder::reorder)
/// with `arange(B).repeat_interleave(num_beams)` (before the first step: expand any per-row state
/// such as encoder outputs) and after every step with the indices of the rows the surviving beams
/// come from.
pub trait IncrementalDecoder {
    /// Feeds `new_tokens` `[N, T]` (int64: the tokens not fed yet; the whole prompt on the first
    /// call) and returns the logits of the LAST position, `[N, V]` (floating point).
    fn step(&mut self, new_tokens: &Tensor) -> Result<Tensor>;
    /// Reorders / expands the cached state along dimension 0: row `i` of the new state is row
    /// `index[i]` of the old one (`index` `[N']`, int64, on the decoder's device).
    fn reorder(&mut self, index: &Tensor) -> Result<()>;
}

/// Generation settings, named and defaulted as Hugging Face's `GenerationConfig`.
///
/// Differences from HF's defaults: `top_k` defaults to 0 (off; HF: 50, which only matters with
/// `do_sample`), `eos_token_id` to -1 (no eos, HF: `None`) and `pad_token_id` to 0 (HF: `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Maximum total length, prompt included (HF `max_length`, default 20).
    pub max_length: i64,
    /// Minimum total length, prompt included: eos is forbidden while the sequence is shorter
    /// (HF `min_length`, default 0).
    pub min_length: i64,
    /// Number of beams; 1 = greedy search or sampling (default 1).
    pub num_beams: i64,
    /// Exponent of the length a finished beam's summed log-prob is divided by (default 1.0).
    pub length_penalty: f64,
    /// Beam search: stop a row as soon as it has `num_beams` finished hypotheses (default false).
    pub early_stopping: bool,
    /// Repetition penalty (CTRL): scores of tokens already in the sequence (prompt included) are
    /// multiplied by it when negative, divided by it otherwise (default 1.0 = off).
    pub repetition_penalty: f64,
    /// Forbid repeating any n-gram of this size (prompt included; default 0 = off).
    pub no_repeat_ngram_size: i64,
    /// Sample instead of taking the best token (default false).
    pub do_sample: bool,
    /// Nucleus sampling: keep the smallest set of top tokens whose probability reaches `top_p`
    /// (default 1.0 = off).
    pub top_p: f64,
    /// Top-k sampling: keep the `top_k` best tokens (default 0 = off).
    pub top_k: i64,
    /// Sampling temperature: logits are divided by it (default 1.0).
    pub temperature: f64,
    /// End-of-sequence token; negative = none (rows then always run to `max_length`).
    pub eos_token_id: i64,
    /// Padding token written after a row's eos (default 0).
    pub pad_token_id: i64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_length: 20,
            min_length: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: false,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            do_sample: false,
            top_p: 1.0,
            top_k: 0,
            temperature: 1.0,
            eos_token_id: -1,
            pad_token_id: 0,
        }
    }
}

impl GenerationConfig {
    /// Checks the settings for values HF would reject or that cannot work (errors name the field).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| {
            Err(VlpError::input(format!("GenerationConfig.{field}"), msg))
        };
        if self.max_length < 1 {
            return bad(
                "max_length",
                format!("must be >= 1, is {}", self.max_length),
            );
        }
        if self.min_length < 0 || self.min_length > self.max_length {
            return bad(
                "min_length",
                format!(
                    "must lie in 0..=max_length ({}), is {}",
                    self.max_length, self.min_length
                ),
            );
        }
        if self.num_beams < 1 {
            return bad("num_beams", format!("must be >= 1, is {}", self.num_beams));
        }
        if self.do_sample && self.num_beams > 1 {
            return Err(VlpError::Unsupported {
                what: "beam sampling (do_sample with num_beams > 1)".into(),
            });
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return bad(
                "repetition_penalty",
                format!("must be > 0, is {}", self.repetition_penalty),
            );
        }
        if self.no_repeat_ngram_size < 0 {
            return bad(
                "no_repeat_ngram_size",
                format!("must be >= 0, is {}", self.no_repeat_ngram_size),
            );
        }
        if !self.length_penalty.is_finite() {
            return bad(
                "length_penalty",
                format!("must be finite, is {}", self.length_penalty),
            );
        }
        if self.do_sample {
            if self.temperature.is_nan() || self.temperature <= 0.0 {
                return bad(
                    "temperature",
                    format!("must be > 0, is {}", self.temperature),
                );
            }
            if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
                return bad("top_p", format!("must lie in (0, 1], is {}", self.top_p));
            }
            if self.top_k < 0 {
                return bad("top_k", format!("must be >= 0, is {}", self.top_k));
            }
        }
        Ok(())
    }

    fn eos(&self) -> Option<i64> {
        (self.eos_token_id >= 0).then_some(self.eos_token_id)
    }
}

/// Restricts the tokens that may follow a prefix (HF's `prefix_allowed_tokens_fn`).
///
/// Any `Fn(usize, &[i64]) -> Option<Vec<i64>>` closure is a `PrefixConstraint`.
pub trait PrefixConstraint {
    /// Tokens allowed after `prefix` (the tokens generated so far, prompt excluded) for batch
    /// row `batch_idx` (the row of the prompt, not of the beam); `None` = any token. All other
    /// tokens get a score of -inf.
    fn allowed(&self, batch_idx: usize, prefix: &[i64]) -> Option<Vec<i64>>;
}

impl<F> PrefixConstraint for F
where
    F: Fn(usize, &[i64]) -> Option<Vec<i64>>,
{
    fn allowed(&self, batch_idx: usize, prefix: &[i64]) -> Option<Vec<i64>> {
        self(batch_idx, prefix)
    }
}

/// A prefix tree over candidate token sequences (OFA's constrained decoding over an answer list).
///
/// As a [`PrefixConstraint`] it allows, after a prefix, exactly the tokens that continue it to
/// some candidate; a prefix that is no candidate's prefix (or a complete candidate) allows
/// nothing. End every candidate with the eos token so that generation can stop on it. The same
/// trie applies to every batch row.
#[derive(Debug, Clone, Default)]
pub struct Trie {
    /// `nodes[0]` is the root; each node maps a token to its child's index.
    nodes: Vec<BTreeMap<i64, usize>>,
}

impl Trie {
    /// Builds the trie of `seqs`.
    pub fn new(seqs: &[Vec<i64>]) -> Self {
        let mut trie = Trie {
            nodes: vec![BTreeMap::new()],
        };
        for seq in seqs {
            let mut node = 0;
            for &tok in seq {
                node = match trie.nodes[node].get(&tok) {
                    Some(&child) => child,
                    None => {
                        trie.nodes.push(BTreeMap::new());
                        let child = trie.nodes.len() - 1;
                        trie.nodes[node].insert(tok, child);
                        child
                    }
                };
            }
        }
        trie
    }

    /// The tokens that continue `prefix` (sorted), or `None` if `prefix` leads nowhere in the trie.
    pub fn next_tokens(&self, prefix: &[i64]) -> Option<Vec<i64>> {
        let mut node = 0;
        for tok in prefix {
            node = *self.nodes[node].get(tok)?;
        }
        Some(self.nodes[node].keys().copied().collect())
    }
}

impl PrefixConstraint for Trie {
    fn allowed(&self, _batch_idx: usize, prefix: &[i64]) -> Option<Vec<i64>> {
        Some(self.next_tokens(prefix).unwrap_or_default())
    }
}

/// What [`generate`] returns.
#[derive(Debug)]
pub struct GenerationOutput {
    /// `[B, L]` int64: prompt + generated tokens, padded with `pad_token_id`, as HF returns them
    /// (beam search: the best hypothesis, followed by eos when it ended with one and there is room).
    pub sequences: Tensor,
    /// `[B]` float: beam search: the final, length-penalised score of the returned hypothesis
    /// (HF `sequences_scores`); greedy / sampling: the sum of the log-probabilities of the
    /// generated tokens (eos included, pads excluded) under the distribution they were chosen from
    /// (after the logits processors and warpers).
    pub scores: Tensor,
}

/// Generates continuations of `prompt` (`[B, P]` int64, on the decoder's device, `P >= 1`, no
/// padding) with greedy search, sampling or beam search as `cfg` says, optionally constrained by
/// `constraint`.
///
/// Sampling: with `rng_seed = Some(seed)` the draws come from a private generator seeded with
/// `seed` (reproducible, thread-safe, the same on every device); with `None` they come from
/// libtorch's global generator through `multinomial`, exactly as HF draws them (call
/// `tch::manual_seed` first for a reproducible stream).
pub fn generate(
    decoder: &mut dyn IncrementalDecoder,
    prompt: &Tensor,
    cfg: &GenerationConfig,
    constraint: Option<&dyn PrefixConstraint>,
    rng_seed: Option<u64>,
) -> Result<GenerationOutput> {
    cfg.validate()?;
    let size = prompt.size();
    if size.len() != 2 || size[0] < 1 || size[1] < 1 {
        return Err(VlpError::input(
            "prompt",
            format!("expected [B >= 1, P >= 1], got {size:?}"),
        ));
    }
    if prompt.kind() != Kind::Int64 {
        return Err(VlpError::input(
            "prompt",
            format!("expected int64 ids, got {:?}", prompt.kind()),
        ));
    }
    if size[1] >= cfg.max_length {
        return Err(VlpError::input(
            "prompt",
            format!(
                "length {} leaves no room below max_length {}",
                size[1], cfg.max_length
            ),
        ));
    }
    let rows = tensor_rows(prompt)?;
    let ctx = Ctx {
        cfg,
        constraint,
        prompt_len: size[1] as usize,
        device: prompt.device(),
    };
    if cfg.num_beams > 1 {
        beam_search(decoder, prompt, rows, &ctx)
    } else {
        greedy_or_sample(decoder, prompt, rows, &ctx, rng_seed)
    }
}

/// What every step needs besides the sequences.
struct Ctx<'a> {
    cfg: &'a GenerationConfig,
    constraint: Option<&'a dyn PrefixConstraint>,
    prompt_len: usize,
    device: Device,
}

fn tensor_rows(t: &Tensor) -> Result<Vec<Vec<i64>>> {
    let size = t.size();
    let flat = Vec::<i64>::try_from(t.f_to_device(Device::Cpu)?.f_reshape([-1])?)?;
    Ok(flat.chunks(size[1] as usize).map(<[i64]>::to_vec).collect())
}

fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    let t = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_reshape([-1])?;
    Ok(Vec::<f32>::try_from(&t)?)
}

fn to_vec_i64(t: &Tensor) -> Result<Vec<i64>> {
    let t = t.f_to_device(Device::Cpu)?.f_reshape([-1])?;
    Ok(Vec::<i64>::try_from(&t)?)
}

/// Calls the decoder and checks the logits' shape.
fn step(decoder: &mut dyn IncrementalDecoder, new_tokens: &Tensor, n: i64) -> Result<Tensor> {
    let logits = decoder.step(new_tokens)?;
    let size = logits.size();
    if size.len() != 2 || size[0] != n || size[1] < 2 {
        return Err(VlpError::input(
            "decoder logits",
            format!("expected [{n}, V >= 2], got {size:?}"),
        ));
    }
    if !logits.is_floating_point() {
        return Err(VlpError::input(
            "decoder logits",
            format!("expected floating point, got {:?}", logits.kind()),
        ));
    }
    Ok(logits)
}

/// The tokens banned by the no-repeat-ngram rule for one sequence (HF `_get_ngrams` +
/// `_get_generated_ngrams`): every token that followed an earlier occurrence of the last
/// `n - 1` tokens.
fn banned_ngram_tokens(seq: &[i64], n: usize) -> Vec<i64> {
    let cur_len = seq.len();
    if n == 0 || cur_len + 1 < n {
        return Vec::new();
    }
    let key = &seq[cur_len + 1 - n..];
    let mut banned = Vec::new();
    for start in 0..(cur_len + 1).saturating_sub(n) {
        if &seq[start..start + n - 1] == key {
            banned.push(seq[start + n - 1]);
        }
    }
    banned
}

/// Applies the logits processors in HF's order to `scores` `[N, V]` (row `i` continues
/// `seqs[i]`, which belongs to batch row `i / beams`). Rows with `active[i] == false` (finished
/// greedy rows, done beam rows) skip the per-row processors: their scores are never used.
fn process(
    scores: Tensor,
    seqs: &[Vec<i64>],
    beams: usize,
    active: &[bool],
    ctx: &Ctx,
) -> Result<Tensor> {
    let cfg = ctx.cfg;
    let n = seqs.len();
    let v = scores.size()[1];
    let cur_len = seqs[0].len();
    let mut scores = scores;
    if cfg.repetition_penalty != 1.0 {
        let flat: Vec<i64> = seqs.iter().flatten().copied().collect();
        let ids = Tensor::from_slice(&flat)
            .f_view([n as i64, cur_len as i64])?
            .f_to_device(ctx.device)?;
        let score = scores.f_gather(1, &ids, false)?;
        let penalised = (&score * cfg.repetition_penalty)
            .f_where_self(&score.f_lt(0.0)?, &(&score / cfg.repetition_penalty))?;
        scores = scores.f_scatter(1, &ids, &penalised)?;
    }
    if cfg.no_repeat_ngram_size > 0 {
        let (mut r, mut c) = (Vec::new(), Vec::new());
        for (i, seq) in seqs.iter().enumerate() {
            if !active[i] {
                continue;
            }
            for tok in banned_ngram_tokens(seq, cfg.no_repeat_ngram_size as usize) {
                r.push(i as i64);
                c.push(tok);
            }
        }
        scores = fill_neg_inf(scores, &r, &c, ctx.device)?;
    }
    if let Some(eos) = cfg.eos() {
        if cfg.min_length > 0 && (cur_len as i64) < cfg.min_length {
            check_token(eos, v, "GenerationConfig.eos_token_id")?;
            let col = Tensor::from_slice(&[eos]).f_to_device(ctx.device)?;
            scores = scores.f_index_fill(1, &col, f64::NEG_INFINITY)?;
        }
    }
    if let Some(constraint) = ctx.constraint {
        let mut keep = vec![1u8; n * v as usize];
        let mut any = false;
        for (i, seq) in seqs.iter().enumerate() {
            if !active[i] {
                continue;
            }
            if let Some(allowed) = constraint.allowed(i / beams, &seq[ctx.prompt_len..]) {
                any = true;
                let row = &mut keep[i * v as usize..(i + 1) * v as usize];
                row.fill(0);
                for tok in allowed {
                    check_token(tok, v, "constraint token")?;
                    row[tok as usize] = 1;
                }
            }
        }
        if any {
            let drop = Tensor::from_slice(&keep)
                .f_view([n as i64, v])?
                .f_eq(0)?
                .f_to_device(ctx.device)?;
            scores = scores.f_masked_fill(&drop, f64::NEG_INFINITY)?;
        }
    }
    Ok(scores)
}

fn check_token(tok: i64, v: i64, what: &str) -> Result<()> {
    if tok < 0 || tok >= v {
        return Err(VlpError::input(
            what,
            format!("token {tok} outside the vocabulary 0..{v}"),
        ));
    }
    Ok(())
}

/// Sets `scores[rows[k], cols[k]] = -inf`.
fn fill_neg_inf(scores: Tensor, rows: &[i64], cols: &[i64], device: Device) -> Result<Tensor> {
    if rows.is_empty() {
        return Ok(scores);
    }
    let r = Tensor::from_slice(rows).f_to_device(device)?;
    let c = Tensor::from_slice(cols).f_to_device(device)?;
    let value = Tensor::f_scalar_tensor(f64::NEG_INFINITY, (scores.kind(), device))?;
    Ok(scores.f_index_put(&[Some(r), Some(c)], &value, false)?)
}

/// HF's sampling warpers, in order: temperature, top-k, top-p (the best token is always kept).
fn warp(scores: Tensor, cfg: &GenerationConfig) -> Result<Tensor> {
    let v = scores.size()[1];
    let mut scores = scores;
    if cfg.temperature != 1.0 {
        scores = &scores / cfg.temperature;
    }
    if cfg.top_k != 0 {
        let k = cfg.top_k.max(1).min(v);
        let (top, _) = scores.f_topk(k, -1, true, true)?;
        let kth = top.f_narrow(-1, k - 1, 1)?;
        scores = scores.f_masked_fill(&scores.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
    }
    if cfg.top_p < 1.0 {
        let (sorted, idx) = scores.f_sort(-1, false)?;
        let cum = sorted
            .f_softmax(-1, None::<Kind>)?
            .f_cumsum(-1, None::<Kind>)?;
        let remove = cum.f_le(1.0 - cfg.top_p)?;
        // keep the best token (HF 5.x always does; 4.25 would remove every token here)
        let mut best = remove.f_narrow(-1, v - 1, 1)?;
        let _ = best.f_fill_(0)?;
        let remove = remove.f_scatter(1, &idx, &remove)?;
        scores = scores.f_masked_fill(&remove, f64::NEG_INFINITY)?;
    }
    Ok(scores)
}

/// SplitMix64: a small, stable, seedable generator for [`generate`]'s `rng_seed`.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws one token per row from `probs` `[N, V]` with `rng` (inverse CDF).
fn sample_rows(probs: &Tensor, rng: &mut SplitMix64) -> Result<Vec<i64>> {
    let v = probs.size()[1] as usize;
    let p = to_vec_f32(probs)?;
    let mut out = Vec::with_capacity(p.len() / v);
    for row in p.chunks(v) {
        let total: f64 = row.iter().map(|&x| f64::from(x)).sum();
        if total.is_nan() || total <= 0.0 || total.is_infinite() {
            return Err(VlpError::Msg(format!(
                "sampling: probabilities sum to {total}"
            )));
        }
        let u = rng.next_f64() * total;
        let mut acc = 0.0;
        let mut pick = None;
        for (tok, &x) in row.iter().enumerate() {
            if x > 0.0 {
                acc += f64::from(x);
                pick = Some(tok);
                if u < acc {
                    break;
                }
            }
        }
        out.push(pick.unwrap_or(0) as i64);
    }
    Ok(out)
}

/// HF `greedy_search` / `sample`.
fn greedy_or_sample(
    decoder: &mut dyn IncrementalDecoder,
    prompt: &Tensor,
    mut seqs: Vec<Vec<i64>>,
    ctx: &Ctx,
    rng_seed: Option<u64>,
) -> Result<GenerationOutput> {
    let cfg = ctx.cfg;
    let b = seqs.len();
    let eos = cfg.eos();
    let mut rng = rng_seed.map(SplitMix64);
    let mut unfinished = vec![true; b];
    let mut sum_logprobs = vec![0f64; b];
    let mut new_tokens = prompt.shallow_clone();
    loop {
        let logits = step(decoder, &new_tokens, b as i64)?;
        let mut scores = process(logits, &seqs, 1, &unfinished, ctx)?;
        let next = if cfg.do_sample {
            scores = warp(scores, cfg)?;
            let probs = scores.f_softmax(-1, None::<Kind>)?;
            match rng.as_mut() {
                Some(rng) => sample_rows(&probs, rng)?,
                None => to_vec_i64(&probs.f_multinomial(1, false)?)?,
            }
        } else {
            to_vec_i64(&scores.f_argmax(-1, false)?)?
        };
        let chosen = Tensor::from_slice(&next)
            .f_to_device(ctx.device)?
            .f_unsqueeze(1)?;
        let logp = to_vec_f32(
            &scores
                .f_log_softmax(-1, Kind::Float)?
                .f_gather(1, &chosen, false)?,
        )?;
        let mut toks = Vec::with_capacity(b);
        for i in 0..b {
            let tok = if unfinished[i] {
                sum_logprobs[i] += f64::from(logp[i]);
                next[i]
            } else {
                cfg.pad_token_id
            };
            seqs[i].push(tok);
            if eos == Some(tok) {
                unfinished[i] = false;
            }
            toks.push(tok);
        }
        if (eos.is_some() && !unfinished.iter().any(|&u| u))
            || seqs[0].len() as i64 >= cfg.max_length
        {
            break;
        }
        new_tokens = Tensor::from_slice(&toks)
            .f_view([b as i64, 1])?
            .f_to_device(ctx.device)?;
    }
    finish(&seqs, &sum_logprobs, ctx.device)
}

fn finish(seqs: &[Vec<i64>], scores: &[f64], device: Device) -> Result<GenerationOutput> {
    let len = seqs[0].len() as i64;
    let flat: Vec<i64> = seqs.iter().flatten().copied().collect();
    let scores: Vec<f32> = scores.iter().map(|&s| s as f32).collect();
    Ok(GenerationOutput {
        sequences: Tensor::from_slice(&flat)
            .f_view([seqs.len() as i64, len])?
            .f_to_device(device)?,
        scores: Tensor::from_slice(&scores).f_to_device(device)?,
    })
}

/// HF `BeamHypotheses`: the `num_beams` best finished hypotheses of one batch row.
struct BeamHypotheses {
    num_beams: usize,
    length_penalty: f64,
    early_stopping: bool,
    /// (score, tokens without the final eos) in insertion order, as HF keeps them.
    beams: Vec<(f64, Vec<i64>)>,
    worst_score: f64,
}

impl BeamHypotheses {
    fn new(num_beams: usize, length_penalty: f64, early_stopping: bool) -> Self {
        BeamHypotheses {
            num_beams,
            length_penalty,
            early_stopping,
            beams: Vec::new(),
            worst_score: 1e9,
        }
    }

    /// Adds a hypothesis whose log-probs sum to `sum_logprobs`; its score divides that by
    /// `len(hyp) ** length_penalty` (4.25: the whole length, prompt included, eos excluded).
    fn add(&mut self, hyp: Vec<i64>, sum_logprobs: f64) {
        let score = sum_logprobs / (hyp.len() as f64).powf(self.length_penalty);
        if self.beams.len() < self.num_beams || score > self.worst_score {
            self.beams.push((score, hyp));
            if self.beams.len() > self.num_beams {
                // Python: sorted((s, idx)) -> drop the first, the new worst is the second
                let mut order: Vec<(f64, usize)> = self
                    .beams
                    .iter()
                    .enumerate()
                    .map(|(i, (s, _))| (*s, i))
                    .collect();
                order.sort_by(|a, b| {
                    a.0.partial_cmp(&b.0)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(a.1.cmp(&b.1))
                });
                self.beams.remove(order[0].1);
                self.worst_score = order[1].0;
            } else {
                self.worst_score = score.min(self.worst_score);
            }
        }
    }

    /// Whether no running beam can still beat the worst finished hypothesis (HF's heuristic:
    /// the best running sum divided by the current length).
    fn is_done(&self, best_sum_logprobs: f64, cur_len: usize) -> bool {
        if self.beams.len() < self.num_beams {
            false
        } else if self.early_stopping {
            true
        } else {
            let cur_score = best_sum_logprobs / (cur_len as f64).powf(self.length_penalty);
            self.worst_score >= cur_score
        }
    }

    /// The best hypothesis: the last of the highest-scoring ones (Python's stable sort + pop).
    fn best(&self) -> Option<&(f64, Vec<i64>)> {
        let mut sorted: Vec<&(f64, Vec<i64>)> = self.beams.iter().collect();
        sorted.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        sorted.pop()
    }
}

/// HF `BeamSearchScorer` (one group, one returned sequence per row).
struct BeamScorer {
    num_beams: usize,
    eos: Option<i64>,
    pad: i64,
    hyps: Vec<BeamHypotheses>,
    done: Vec<bool>,
}

/// The beams chosen by one [`BeamScorer::process`] call, `[B * num_beams]` each.
struct NextBeams {
    scores: Vec<f32>,
    tokens: Vec<i64>,
    /// The (global) row each new beam continues.
    indices: Vec<i64>,
}

impl BeamScorer {
    fn new(batch: usize, cfg: &GenerationConfig) -> Self {
        let nb = cfg.num_beams as usize;
        BeamScorer {
            num_beams: nb,
            eos: cfg.eos(),
            pad: cfg.pad_token_id,
            hyps: (0..batch)
                .map(|_| BeamHypotheses::new(nb, cfg.length_penalty, cfg.early_stopping))
                .collect(),
            done: vec![false; batch],
        }
    }

    fn is_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// One step: `top_scores` / `top_ids` are, per batch row, the `2 * num_beams` best
    /// (running score + token log-prob) over `num_beams * v` flat ids, best first; `seqs` are
    /// the current beams (`cur_len` tokens each). An eos candidate becomes a finished hypothesis
    /// if it ranks among the first `num_beams` (else it is skipped); the other candidates fill
    /// the next beams in order.
    fn process(
        &mut self,
        seqs: &[Vec<i64>],
        top_scores: &[f32],
        top_ids: &[i64],
        v: i64,
    ) -> Result<NextBeams> {
        let nb = self.num_beams;
        let n = seqs.len();
        let cur_len = seqs[0].len();
        let mut next = NextBeams {
            scores: vec![0.0; n],
            tokens: vec![self.pad; n],
            indices: vec![0; n],
        };
        for row in 0..self.done.len() {
            if self.done[row] {
                // HF points these rows at row 0; their own first beam serves as well (unused).
                for k in 0..nb {
                    next.indices[row * nb + k] = (row * nb) as i64;
                }
                continue;
            }
            let cand = row * 2 * nb..(row + 1) * 2 * nb;
            let mut beam_idx = 0;
            for (rank, (&score, &flat)) in top_scores[cand.clone()]
                .iter()
                .zip(&top_ids[cand.clone()])
                .enumerate()
            {
                let tok = flat % v;
                let source = row * nb + (flat / v) as usize;
                if self.eos == Some(tok) {
                    if rank >= nb {
                        continue;
                    }
                    self.hyps[row].add(seqs[source].clone(), f64::from(score));
                } else {
                    next.scores[row * nb + beam_idx] = score;
                    next.tokens[row * nb + beam_idx] = tok;
                    next.indices[row * nb + beam_idx] = source as i64;
                    beam_idx += 1;
                }
                if beam_idx == nb {
                    break;
                }
            }
            if beam_idx < nb {
                return Err(VlpError::Msg(format!(
                    "beam search: row {row} has fewer than {nb} non-eos candidates among its top {}",
                    2 * nb
                )));
            }
            let best = top_scores[cand]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            self.done[row] = self.done[row] || self.hyps[row].is_done(f64::from(best), cur_len);
        }
        Ok(next)
    }

    /// Adds the running beams of unfinished rows as hypotheses and returns, per row, the best
    /// hypothesis formatted as HF does (eos appended when there is room, then `pad`, all rows as
    /// long as the longest + 1, at most `max_length`) and its score.
    fn finalize(
        mut self,
        seqs: &[Vec<i64>],
        beam_scores: &[f32],
        max_length: i64,
    ) -> Result<(Vec<Vec<i64>>, Vec<f64>)> {
        let nb = self.num_beams;
        for (row, h) in self.hyps.iter_mut().enumerate() {
            if self.done[row] {
                continue;
            }
            for i in row * nb..(row + 1) * nb {
                h.add(seqs[i].clone(), f64::from(beam_scores[i]));
            }
        }
        let mut best = Vec::with_capacity(self.hyps.len());
        for (row, h) in self.hyps.iter().enumerate() {
            best.push(h.best().ok_or_else(|| {
                VlpError::Msg(format!("beam search: row {row} has no hypothesis"))
            })?);
        }
        let longest = best.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
        let width = (longest + 1).min(max_length as usize);
        let mut out = Vec::with_capacity(best.len());
        let mut scores = Vec::with_capacity(best.len());
        for (score, hyp) in best {
            let mut s = hyp.clone();
            if s.len() < width {
                if let Some(eos) = self.eos {
                    s.push(eos);
                }
            }
            s.resize(width, self.pad);
            out.push(s);
            scores.push(*score);
        }
        Ok((out, scores))
    }
}

/// HF `beam_search`.
fn beam_search(
    decoder: &mut dyn IncrementalDecoder,
    prompt: &Tensor,
    rows: Vec<Vec<i64>>,
    ctx: &Ctx,
) -> Result<GenerationOutput> {
    let cfg = ctx.cfg;
    let b = rows.len();
    let nb = cfg.num_beams as usize;
    let n = b * nb;
    let expand = Tensor::arange(b as i64, (Kind::Int64, ctx.device)).f_repeat_interleave_self_int(
        nb as i64,
        0,
        None::<i64>,
    )?;
    decoder.reorder(&expand)?;
    let mut seqs: Vec<Vec<i64>> = (0..n).map(|i| rows[i / nb].clone()).collect();
    let mut beam_scores: Vec<f32> = (0..n)
        .map(|i| if i % nb == 0 { 0.0 } else { -1e9 })
        .collect();
    let mut scorer = BeamScorer::new(b, cfg);
    let mut new_tokens = prompt.f_index_select(0, &expand)?;
    loop {
        let logits = step(decoder, &new_tokens, n as i64)?;
        let v = logits.size()[1];
        let active: Vec<bool> = (0..n).map(|i| !scorer.done[i / nb]).collect();
        let logp = logits.f_log_softmax(-1, None::<Kind>)?;
        let processed = process(logp, &seqs, nb, &active, ctx)?;
        let running = Tensor::from_slice(&beam_scores)
            .f_to_device(ctx.device)?
            .f_unsqueeze(1)?;
        let total = (processed + running).f_view([b as i64, nb as i64 * v])?;
        let (top_scores, top_ids) = total.f_topk(2 * nb as i64, 1, true, true)?;
        let next = scorer.process(&seqs, &to_vec_f32(&top_scores)?, &to_vec_i64(&top_ids)?, v)?;
        seqs = (0..n)
            .map(|i| {
                let mut s = seqs[next.indices[i] as usize].clone();
                s.push(next.tokens[i]);
                s
            })
            .collect();
        beam_scores = next.scores;
        if scorer.is_done() || seqs[0].len() as i64 >= cfg.max_length {
            break;
        }
        decoder.reorder(&Tensor::from_slice(&next.indices).f_to_device(ctx.device)?)?;
        new_tokens = Tensor::from_slice(&next.tokens)
            .f_view([n as i64, 1])?
            .f_to_device(ctx.device)?;
    }
    let (out, scores) = scorer.finalize(&seqs, &beam_scores, cfg.max_length)?;
    finish(&out, &scores, ctx.device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_bans() {
        // 2-grams: after 7 came 8 and 9 earlier
        assert_eq!(banned_ngram_tokens(&[7, 8, 1, 7, 9, 2, 7], 2), vec![8, 9]);
        // 3-grams: (7, 8) -> 1
        assert_eq!(banned_ngram_tokens(&[7, 8, 1, 2, 7, 8], 3), vec![1]);
        assert!(banned_ngram_tokens(&[7, 8], 3).is_empty());
        assert!(banned_ngram_tokens(&[7], 2).is_empty());
        assert_eq!(banned_ngram_tokens(&[4, 4], 1), vec![4, 4]);
    }

    #[test]
    fn hypotheses_keep_the_best_and_track_the_worst() {
        let mut h = BeamHypotheses::new(2, 1.0, false);
        h.add(vec![1, 2], -2.0); // -1.0
        assert_eq!(h.worst_score, -1.0);
        h.add(vec![1, 2, 3, 4], -2.0); // -0.5
        assert_eq!(h.worst_score, -1.0);
        h.add(vec![1], -3.0); // -3.0: not better than the worst, rejected
        assert_eq!(h.beams.len(), 2);
        h.add(vec![1, 2, 3, 4, 5, 6, 7, 8], -2.0); // -0.25 evicts -1.0
        assert_eq!(h.worst_score, -0.5);
        assert_eq!(h.best().unwrap().1.len(), 8);
        // done when the best running sum over cur_len cannot beat the worst
        assert!(!h.is_done(-1.0, 4));
        assert!(h.is_done(-2.1, 4));
        // early stopping: done as soon as num_beams hypotheses exist
        let mut e = BeamHypotheses::new(1, 1.0, true);
        assert!(!e.is_done(0.0, 1));
        e.add(vec![1, 2], -100.0);
        assert!(e.is_done(0.0, 1));
    }

    #[test]
    fn eos_outside_the_top_beams_is_skipped() {
        let cfg = GenerationConfig {
            num_beams: 2,
            eos_token_id: 1,
            pad_token_id: 0,
            max_length: 10,
            ..Default::default()
        };
        let mut scorer = BeamScorer::new(1, &cfg);
        let seqs = vec![vec![5, 6], vec![5, 7]];
        let v = 4;
        // ranks: eos after beam 0, token 2 after beam 0, eos after beam 1, token 3 after beam 1
        let ids = [1, 2, v + 1, v + 3];
        let next = scorer
            .process(&seqs, &[-1.0, -1.8, -2.0, -2.5], &ids, v)
            .unwrap();
        assert_eq!(
            scorer.hyps[0].beams.len(),
            1,
            "only the rank-0 eos is a hypothesis"
        );
        assert_eq!(scorer.hyps[0].beams[0].1, vec![5, 6]);
        assert_eq!(next.tokens, vec![2, 3]);
        assert_eq!(next.indices, vec![0, 1]);
        assert_eq!(next.scores, vec![-1.8, -2.5]);
        // finalize: running beams join; the best is returned with eos appended, padded
        let seqs = vec![vec![5, 6, 2], vec![5, 7, 3]];
        let (out, scores) = scorer.finalize(&seqs, &next.scores, 10).unwrap();
        assert_eq!(out, vec![vec![5, 6, 1]]);
        assert_eq!(scores, vec![-0.5]);
    }

    #[test]
    fn ties_go_to_the_later_hypothesis() {
        // Python's stable sort + pop(): among equal scores the last added wins
        let mut h = BeamHypotheses::new(3, 1.0, false);
        h.add(vec![5, 6], -1.0);
        h.add(vec![5, 6, 2], -1.5);
        h.add(vec![5], -3.0);
        assert_eq!(h.best().unwrap().1, vec![5, 6, 2]);
    }
}
