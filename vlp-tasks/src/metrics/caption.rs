//! Captioning metrics as the COCO caption evaluation (`pycocoevalcap`) computes them: PTB
//! tokenisation, BLEU-1..4 (corpus level, "closest" reference length), ROUGE-L (pycocoevalcap's
//! `Rouge`: LCS F-measure, β = 1.2, mean over images) and CIDEr (pycocoevalcap's `Cider`, i.e.
//! CIDEr-D: tf-idf n-gram vectors with clipping and a Gaussian length penalty, σ = 6, × 10).
//! METEOR and SPICE (Java tools in pycocoevalcap) are not implemented.
//!
//! Tokenisation: pycocoevalcap runs Stanford CoreNLP 3.4.1's `PTBTokenizer -preserveLines
//! -lowerCase` (Java) and drops the tokens `'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;`.
//! [`ptb_tokenize`] is a Rust re-implementation of the parts of that tokeniser captions exercise
//! (lower-casing, punctuation split off words, clitics `n't 's 're 've 'll 'd 'm`, `cannot gonna
//! gotta wanna lemme gimme`, quotes, brackets, `$ % #`, ellipses, abbreviations and initials keeping
//! their period, numbers `1,000 3.5 5:30` kept whole). Two quirks of the original are kept: with
//! `-lowerCase` brackets come out as `-lrb-` … which the (upper-case) punctuation list does not
//! remove, and runs such as `!!` or `?!` stay one token that is not removed either. It is checked
//! token for token against the Java tokeniser on the committed cases in
//! `tests/data/caption/ptb_cases.json`.
//!
//! Evaluation follows `COCOEvalCap.evaluate`: the images evaluated are those of the results; each
//! must have exactly one result caption and at least one reference.
use std::collections::HashMap;

/// Tokens pycocoevalcap removes after tokenising.
pub const PTB_PUNCTUATIONS: &[&str] = &[
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Words whose trailing period is part of them (PTBLexer's abbreviations, lower-cased).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "inc", "co", "corp", "ltd", "vs", "etc",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mt",
    "ft", "no", "gen", "gov", "sen", "rep", "rev", "capt", "col", "lt", "sgt", "ave", "blvd",
    "hon", "messrs", "mme", "mlle", "esq", "bros", "dept", "fig", "jr", "u.s", "a.m", "p.m",
];

/// Words the tokeniser splits in two.
const SPLIT_WORDS: &[(&str, &str, &str)] = &[
    ("cannot", "can", "not"),
    ("gonna", "gon", "na"),
    ("gotta", "got", "ta"),
    ("wanna", "wan", "na"),
    ("lemme", "lem", "me"),
    ("gimme", "gim", "me"),
    ("gimmee", "gim", "mee"),
];

fn bracket(c: char) -> Option<&'static str> {
    Some(match c {
        '(' => "-lrb-",
        ')' => "-rrb-",
        '[' => "-lsb-",
        ']' => "-rsb-",
        '{' => "-lcb-",
        '}' => "-rcb-",
        _ => return None,
    })
}

fn is_contraction_token(s: &str) -> bool {
    matches!(s, "'s" | "'m" | "'d" | "'re" | "'ve" | "'ll" | "'n'" | "'n")
        || (s.len() > 1 && s[1..].starts_with(|c: char| c.is_ascii_digit()))
}

fn is_abbreviation(word_with_period: &str) -> bool {
    let core = &word_with_period[..word_with_period.len() - 1];
    if core.is_empty() {
        return false;
    }
    let mut chars = core.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return c.is_alphabetic();
    }
    if core.contains('.')
        && core
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(char::is_alphabetic))
    {
        return true;
    }
    ABBREVIATIONS.contains(&core)
}

/// Splits a chunk's core (no leading/trailing punctuation) at internal separators, then clitics.
fn split_core(s: &str, out: &mut Vec<String>) {
    if s.is_empty() {
        return;
    }
    // Internal separators: "--", "...", ";", and "," not between digits.
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        let sep_len = if s[i..].starts_with("--") {
            2
        } else if s[i..].starts_with("...") {
            3
        } else if c == ';' {
            1
        } else if c == ',' {
            let before = k > 0 && chars[k - 1].1.is_ascii_digit();
            let after = chars.get(k + 1).is_some_and(|(_, n)| n.is_ascii_digit());
            if before && after {
                0
            } else {
                1
            }
        } else {
            0
        };
        if sep_len > 0 && i > 0 && i + sep_len < s.len() {
            tokenize_chunk(&s[..i], out);
            out.push(s[i..i + sep_len].to_string());
            tokenize_chunk(&s[i + sep_len..], out);
            return;
        }
    }
    if let Some((_, a, b)) = SPLIT_WORDS.iter().find(|(w, _, _)| *w == s) {
        out.push(a.to_string());
        out.push(b.to_string());
        return;
    }
    if s.len() > 3 && s.ends_with("n't") {
        out.push(s[..s.len() - 3].to_string());
        out.push("n't".into());
        return;
    }
    for clitic in ["'s", "'m", "'d", "'re", "'ve", "'ll"] {
        if s.len() > clitic.len() && s.ends_with(clitic) {
            out.push(s[..s.len() - clitic.len()].to_string());
            out.push(clitic.to_string());
            return;
        }
    }
    out.push(s.to_string());
}

fn tokenize_chunk(chunk: &str, out: &mut Vec<String>) {
    let mut s = chunk;
    // Leading punctuation.
    loop {
        let Some(c) = s.chars().next() else { return };
        let rest = &s[c.len_utf8()..];
        if s.starts_with("``") {
            out.push("``".into());
            s = &s[2..];
        } else if s.starts_with("...") {
            out.push("...".into());
            s = &s[3..];
        } else if s.starts_with("--") {
            out.push("--".into());
            s = &s[2..];
        } else if c == '"' {
            out.push("``".into());
            s = rest;
        } else if let Some(b) = bracket(c) {
            out.push(b.into());
            s = rest;
        } else if c == '`' || (c == '\'' && !rest.is_empty() && !is_contraction_token(s)) {
            // An opening single quote.
            out.push("`".into());
            s = rest;
        } else if !rest.is_empty()
            && (c == '$'
                || (c == '#' && rest.starts_with(|n: char| n.is_ascii_digit()))
                || matches!(c, '-' | ',' | ';' | ':'))
        {
            out.push(c.to_string());
            s = rest;
        } else if (c == '!' || c == '?') && !rest.trim_start_matches(['!', '?']).is_empty() {
            let run = s.len() - s.trim_start_matches(['!', '?']).len();
            out.push(s[..run].to_string());
            s = &s[run..];
        } else {
            break;
        }
    }
    // Trailing punctuation, collected in reverse.
    let mut tail: Vec<String> = Vec::new();
    while let Some(c) = s.chars().last() {
        let head = &s[..s.len() - c.len_utf8()];
        if head.is_empty() {
            // A single character: a token of its own.
            let tok = if c == '"' {
                "''".to_string()
            } else if let Some(b) = bracket(c) {
                b.to_string()
            } else {
                c.to_string()
            };
            tail.push(tok);
            s = "";
            break;
        }
        if s.ends_with("...") {
            tail.push("...".into());
            s = &s[..s.len() - 3];
        } else if s.ends_with("''") {
            tail.push("''".into());
            s = &s[..s.len() - 2];
        } else if s.ends_with("--") {
            tail.push("--".into());
            s = &s[..s.len() - 2];
        } else if c == '"' {
            tail.push("''".into());
            s = head;
        } else if let Some(b) = bracket(c) {
            tail.push(b.into());
            s = head;
        } else if matches!(c, ',' | ';' | ':' | '-' | '%' | '\'') {
            if c == '\'' && head.ends_with("'n") {
                break;
            }
            tail.push(c.to_string());
            s = head;
        } else if c == '!' || c == '?' {
            let trimmed = s.trim_end_matches(['!', '?']);
            tail.push(s[trimmed.len()..].to_string());
            s = trimmed;
        } else if c == '.' {
            if is_abbreviation(s) {
                break;
            }
            tail.push(".".into());
            s = head;
        } else {
            break;
        }
    }
    split_core(s, out);
    out.extend(tail.into_iter().rev());
}

/// Stanford `PTBTokenizer -preserveLines -lowerCase` on one line (see the module docs).
pub fn ptb_tokens(line: &str) -> Vec<String> {
    let lower = line
        .to_lowercase()
        .replace(['\u{2018}', '\u{2019}'], "'")
        .replace(['\u{201c}', '\u{201d}'], "\"");
    let mut out = Vec::new();
    for chunk in lower.split_whitespace() {
        tokenize_chunk(chunk, &mut out);
    }
    out
}

/// pycocoevalcap's tokenisation of a caption: PTB tokens minus [`PTB_PUNCTUATIONS`], joined by
/// single spaces.
pub fn ptb_tokenize(caption: &str) -> String {
    let line = caption.replace('\n', " ");
    ptb_tokens(&line)
        .into_iter()
        .filter(|t| !PTB_PUNCTUATIONS.contains(&t.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

type Ngram<'a> = Vec<&'a str>;

/// tf-idf vectors per n-gram order, their norms, and the bigram count (pycocoevalcap's `length`).
type Vector = (Vec<HashMap<Vec<String>, f64>>, [f64; 4], usize);

fn ngram_counts(s: &str, n: usize) -> (usize, HashMap<Ngram<'_>, usize>) {
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut counts = HashMap::new();
    for k in 1..=n {
        for w in words.windows(k) {
            *counts.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    (words.len(), counts)
}

/// Corpus BLEU-1..4 of pycocoevalcap's `Bleu(4)` (`option='closest'`) over tokenised captions:
/// one hypothesis and its references per image.
pub fn bleu(pairs: &[(String, Vec<String>)]) -> [f64; 4] {
    const N: usize = 4;
    let (small, tiny) = (1e-9, 1e-15);
    let (mut testlen, mut reflen) = (0usize, 0usize);
    let mut guess = [0usize; N];
    let mut correct = [0usize; N];
    for (hyp, refs) in pairs {
        let mut maxcounts: HashMap<Ngram<'_>, usize> = HashMap::new();
        let mut reflens = Vec::new();
        for r in refs {
            let (rl, counts) = ngram_counts(r, N);
            reflens.push(rl);
            for (g, c) in counts {
                let e = maxcounts.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        let (tl, counts) = ngram_counts(hyp, N);
        let rl = reflens
            .iter()
            .map(|&l| ((l as i64 - tl as i64).abs(), l))
            .min()
            .map(|(_, l)| l)
            .unwrap_or(0);
        testlen += tl;
        reflen += rl;
        for (k, g) in guess.iter_mut().enumerate() {
            *g += (tl + 1).saturating_sub(k + 1);
        }
        for (g, c) in counts {
            correct[g.len() - 1] += c.min(maxcounts.get(&g).copied().unwrap_or(0));
        }
    }
    let mut out = [0.0; N];
    let mut prod = 1.0;
    for k in 0..N {
        prod *= (correct[k] as f64 + tiny) / (guess[k] as f64 + small);
        out[k] = prod.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (testlen as f64 + tiny) / (reflen as f64 + small);
    if ratio < 1.0 {
        for v in &mut out {
            *v *= (1.0 - 1.0 / ratio).exp();
        }
    }
    out
}

/// Corpus CIDEr (pycocoevalcap's `Cider`: CIDEr-D, n = 4, σ = 6) over tokenised captions, and the
/// per-image scores. Document frequencies come from the references of the images evaluated.
pub fn cider(pairs: &[(String, Vec<String>)]) -> (f64, Vec<f64>) {
    const N: usize = 4;
    const SIGMA: f64 = 6.0;
    if pairs.is_empty() {
        return (0.0, Vec::new());
    }
    let crefs: Vec<Vec<HashMap<Ngram<'_>, usize>>> = pairs
        .iter()
        .map(|(_, refs)| refs.iter().map(|r| ngram_counts(r, N).1).collect())
        .collect();
    let ctest: Vec<HashMap<Ngram<'_>, usize>> =
        pairs.iter().map(|(h, _)| ngram_counts(h, N).1).collect();
    let mut df: HashMap<Ngram<'_>, f64> = HashMap::new();
    for refs in &crefs {
        let mut seen: std::collections::HashSet<&Ngram<'_>> = std::collections::HashSet::new();
        for r in refs {
            seen.extend(r.keys());
        }
        for g in seen {
            *df.entry(g.clone()).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (crefs.len() as f64).ln();
    let to_vec = |counts: &HashMap<Ngram<'_>, usize>| -> Vector {
        let mut vec: Vec<HashMap<Vec<String>, f64>> = vec![HashMap::new(); N];
        let mut norm = [0.0; N];
        let mut length = 0;
        for (g, &tf) in counts {
            let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
            let n = g.len() - 1;
            let v = tf as f64 * (ref_len - d);
            vec[n].insert(g.iter().map(|w| w.to_string()).collect(), v);
            norm[n] += v * v;
            if n == 1 {
                length += tf;
            }
        }
        (vec, norm.map(f64::sqrt), length)
    };
    let mut scores = Vec::with_capacity(pairs.len());
    for (test, refs) in ctest.iter().zip(&crefs) {
        let (vh, nh, lh) = to_vec(test);
        let mut score = [0.0; N];
        for r in refs {
            let (vr, nr, lr) = to_vec(r);
            let delta = lh as f64 - lr as f64;
            for n in 0..N {
                let mut val = 0.0;
                for (g, &h) in &vh[n] {
                    let rv = vr[n].get(g).copied().unwrap_or(0.0);
                    val += h.min(rv) * rv;
                }
                if nh[n] != 0.0 && nr[n] != 0.0 {
                    val /= nh[n] * nr[n];
                }
                val *= (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
                score[n] += val;
            }
        }
        let avg = score.iter().sum::<f64>() / N as f64 / refs.len() as f64 * 10.0;
        scores.push(avg);
    }
    (scores.iter().sum::<f64>() / scores.len() as f64, scores)
}

/// Length of the longest common subsequence of two token sequences (pycocoevalcap's `my_lcs`).
fn lcs_len(a: &[&str], b: &[&str]) -> usize {
    let (long, short) = if a.len() < b.len() { (b, a) } else { (a, b) };
    // One row of the (|long| + 1) × (|short| + 1) table, indexed by the position in `short`.
    let mut row = vec![0usize; short.len() + 1];
    for x in long {
        let mut diag = 0; // table[i - 1][j - 1]
        for (j, y) in short.iter().enumerate() {
            let up = row[j + 1]; // table[i - 1][j]
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[short.len()]
}

/// ROUGE-L of one tokenised candidate against its tokenised references, as pycocoevalcap's
/// `Rouge.calc_score`: tokens are the pieces between single spaces (`str.split(" ")`, so an
/// empty caption is one empty token); for each reference, precision `lcs / |candidate|` and recall
/// `lcs / |reference|`; the maxima of each over the references combine as
/// `(1 + β²) P R / (R + β² P)` with β = 1.2, or 0 when either maximum is 0 (also with no
/// references, where pycocoevalcap asserts).
///
/// ```
/// use vlp_tasks::metrics::caption::rouge_l_image;
/// // LCS "a man riding a": P = 4/5, R = 4/6.
/// let s = rouge_l_image("a man riding a horse", &["a man is riding a bike".into()]);
/// let (p, r, b2) = (0.8, 4.0 / 6.0, 1.44);
/// assert!((s - (1.0 + b2) * p * r / (r + b2 * p)).abs() < 1e-12);
/// ```
pub fn rouge_l_image(candidate: &str, refs: &[String]) -> f64 {
    const BETA: f64 = 1.2;
    let c: Vec<&str> = candidate.split(' ').collect();
    let (mut prec_max, mut rec_max) = (0.0f64, 0.0f64);
    for r in refs {
        let r: Vec<&str> = r.split(' ').collect();
        let lcs = lcs_len(&r, &c) as f64;
        prec_max = prec_max.max(lcs / c.len() as f64);
        rec_max = rec_max.max(lcs / r.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        let b2 = BETA * BETA;
        (1.0 + b2) * prec_max * rec_max / (rec_max + b2 * prec_max)
    } else {
        0.0
    }
}

/// numpy's pairwise summation of a float64 array (`add.reduce`, hence `np.mean`): plain below 8
/// values, eight running sums up to 128, halves (the first a multiple of 8) above.
fn numpy_sum(xs: &[f64]) -> f64 {
    let n = xs.len();
    if n < 8 {
        xs.iter().fold(0.0, |acc, x| acc + x)
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&xs[..8]);
        let whole = n - n % 8;
        for chunk in xs[8..whole].chunks_exact(8) {
            for (r, x) in r.iter_mut().zip(chunk) {
                *r += x;
            }
        }
        let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        xs[whole..].iter().fold(res, |acc, x| acc + x)
    } else {
        let half = n / 2 - (n / 2) % 8;
        numpy_sum(&xs[..half]) + numpy_sum(&xs[half..])
    }
}

/// Corpus ROUGE-L (pycocoevalcap's `Rouge`) over tokenised captions, and the per-image scores
/// ([`rouge_l_image`]); the corpus score is their mean as `np.mean` computes it (numpy's
/// pairwise summation, so the same scores in the same order give the same bits), 0 for no images.
/// `COCOEvalCap` orders the images as the reference file lists them, which can move the last bit.
pub fn rouge_l(pairs: &[(String, Vec<String>)]) -> (f64, Vec<f64>) {
    let scores: Vec<f64> = pairs.iter().map(|(h, rs)| rouge_l_image(h, rs)).collect();
    if scores.is_empty() {
        return (0.0, scores);
    }
    (numpy_sum(&scores) / scores.len() as f64, scores)
}

/// BLEU-1..4, ROUGE-L and CIDEr of raw captions (tokenised here with [`ptb_tokenize`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CaptionMetrics {
    /// BLEU-1.
    #[serde(rename = "Bleu_1")]
    pub bleu_1: f64,
    /// BLEU-2.
    #[serde(rename = "Bleu_2")]
    pub bleu_2: f64,
    /// BLEU-3.
    #[serde(rename = "Bleu_3")]
    pub bleu_3: f64,
    /// BLEU-4.
    #[serde(rename = "Bleu_4")]
    pub bleu_4: f64,
    /// ROUGE-L (LCS F-measure, β = 1.2).
    #[serde(rename = "ROUGE_L")]
    pub rouge_l: f64,
    /// CIDEr (CIDEr-D).
    #[serde(rename = "CIDEr")]
    pub cider: f64,
}

/// The metrics of raw `(hypothesis, references)` pairs, one per image.
pub fn caption_metrics(pairs: &[(String, Vec<String>)]) -> CaptionMetrics {
    let tok: Vec<(String, Vec<String>)> = pairs
        .iter()
        .map(|(h, rs)| {
            (
                ptb_tokenize(h),
                rs.iter().map(|r| ptb_tokenize(r)).collect(),
            )
        })
        .collect();
    let b = bleu(&tok);
    let (r, _) = rouge_l(&tok);
    let (c, _) = cider(&tok);
    CaptionMetrics {
        bleu_1: b[0],
        bleu_2: b[1],
        bleu_3: b[2],
        bleu_4: b[3],
        rouge_l: r,
        cider: c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(
            ptb_tokens("A man's dog doesn't like the cat."),
            ["a", "man", "'s", "dog", "does", "n't", "like", "the", "cat", "."]
        );
        assert_eq!(
            ptb_tokenize("Two dogs (brown) play in the \"snow\"!"),
            "two dogs -lrb- brown -rrb- play in the snow"
        );
        assert_eq!(
            ptb_tokenize("It's a 3.5 inch t-shirt... isn't it?"),
            "it 's a 3.5 inch t-shirt is n't it"
        );
        assert_eq!(
            ptb_tokenize("the U.S. flag, and/or Mr. Smith"),
            "the u.s. flag and/or mr. smith"
        );
    }

    #[test]
    fn lcs() {
        let t = |s: &'static str| s.split(' ').collect::<Vec<_>>();
        assert_eq!(lcs_len(&t("a b c d"), &t("b d a c")), 2);
        assert_eq!(lcs_len(&t("b d a c"), &t("a b c d")), 2);
        assert_eq!(
            lcs_len(&t("a man riding a horse"), &t("a man is riding a bike")),
            4
        );
        assert_eq!(lcs_len(&t("x y"), &t("a b c")), 0);
        assert_eq!(lcs_len(&t("a a a"), &t("a")), 1);
    }

    /// ROUGE-L worked by hand.
    #[test]
    fn rouge_l_by_hand() {
        let refs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // LCS "a man riding a" (4): P = 4/5, R = 4/6; F = 2.44 · (4/5)(2/3) / (2/3 + 1.44 · 4/5)
        // = 19.52 / 27.28 (numerator and denominator × 15).
        let s = rouge_l_image("a man riding a horse", &refs(&["a man is riding a bike"]));
        assert!((s - 19.52 / 27.28).abs() < 1e-15, "{s}");
        assert!((s - 0.715_542_521_994_134_8).abs() < 1e-15, "{s}");
        // P = R: F = P. "the cat on mat": 4 of 6 either way.
        let s = rouge_l_image("the cat sat on the mat", &refs(&["the cat is on a mat"]));
        assert!((s - 2.0 / 3.0).abs() < 1e-15, "{s}");
        // The maxima are taken separately: P = 1 from the long reference, R = 1 from the short
        // one, so F = 1 though no reference equals the candidate.
        let two = refs(&["a dog", "a big dog runs fast in a park"]);
        assert_eq!(rouge_l_image("a dog runs", &two), 1.0);
        // No common token, no references: 0. An empty caption is one empty token.
        assert_eq!(rouge_l_image("x y", &two), 0.0);
        assert_eq!(rouge_l_image("a dog", &[]), 0.0);
        assert_eq!(rouge_l_image("", &refs(&[""])), 1.0);
        assert_eq!(rouge_l_image("", &refs(&["a dog"])), 0.0);
        // Corpus: the mean over images.
        let pairs = vec![
            ("a dog runs".to_string(), two.clone()),
            ("x y".to_string(), two),
        ];
        let (mean, per) = rouge_l(&pairs);
        assert_eq!(per, [1.0, 0.0]);
        assert_eq!(mean, 0.5);
        assert_eq!(rouge_l(&[]), (0.0, vec![]));
    }

    /// numpy's pairwise sum: exact on integers at every size branch, and the grouping it uses.
    #[test]
    fn numpy_pairwise_sum() {
        for n in [0usize, 1, 7, 8, 9, 15, 16, 127, 128, 129, 300, 1000] {
            let xs: Vec<f64> = (1..=n).map(|i| i as f64).collect();
            assert_eq!(numpy_sum(&xs), (n * (n + 1) / 2) as f64, "n = {n}");
        }
        // Eight running sums: 1e16 absorbs each 1 added to it alone, not 1s summed first.
        let mut xs = vec![1.0; 16];
        xs[0] = 1e16;
        assert_eq!(numpy_sum(&xs), 1e16 + 14.0); // np.add.reduce gives the same
        assert_eq!(xs.iter().sum::<f64>(), 1e16);
    }
}
