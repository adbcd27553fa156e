//! Text side of the loaders: a BERT WordPiece tokenizer (from a Hugging Face `tokenizer.json` or a
//! plain `vocab.txt`) that encodes batches to `[B, L]` id/mask tensors exactly as `transformers`
//! does, and the caption/question normalisation of the ALBEF and BLIP data sets.
//!
//! Ids are `i64` throughout (what the embedding layers take); tensors are built on the CPU.
use crate::{Result, VlpError};
use std::path::{Path, PathBuf};
use tch::Tensor;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::AddedToken;

/// Longest word WordPiece splits; longer words become `[UNK]` (BERT's `max_input_chars_per_word`).
pub const MAX_INPUT_CHARS_PER_WORD: usize = 100;

/// Which special tokens frame a single sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpecialStyle {
    /// Standard BERT: `[CLS] x [SEP]`.
    #[default]
    ClsSep,
    /// ALBEF's tokenizer: `[CLS] x`, no trailing `[SEP]`.
    ClsOnly,
    /// No special tokens at all.
    None,
}

impl SpecialStyle {
    /// How many special tokens the style adds to one sequence.
    pub fn num_special(self) -> usize {
        match self {
            SpecialStyle::ClsSep => 2,
            SpecialStyle::ClsOnly => 1,
            SpecialStyle::None => 0,
        }
    }
}

/// How a batch is padded (always on the right, with `[PAD]`, mask 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// To the longest sequence of the batch (`padding="longest"`).
    #[default]
    Longest,
    /// To exactly `n` tokens (`padding="max_length"`); a longer sequence is an error unless
    /// [`EncodeOptions::max_length`] truncates it.
    MaxLength(usize),
}

/// Options of [`Tokenizer::encode_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeOptions {
    /// Padding of the batch.
    pub padding: Padding,
    /// Truncation length (`truncation=True, max_length=n`); the special tokens count toward it.
    pub max_length: Option<usize>,
    /// Special tokens around each sequence.
    pub style: SpecialStyle,
}

impl EncodeOptions {
    /// `padding="longest"`, truncation to `max_length`, `[CLS] x [SEP]`.
    pub fn longest(max_length: usize) -> Self {
        EncodeOptions {
            padding: Padding::Longest,
            max_length: Some(max_length),
            style: SpecialStyle::ClsSep,
        }
    }
    /// `padding="max_length"`, truncation to the same length, `[CLS] x [SEP]` (BLIP's captions).
    pub fn max_length(n: usize) -> Self {
        EncodeOptions {
            padding: Padding::MaxLength(n),
            max_length: Some(n),
            style: SpecialStyle::ClsSep,
        }
    }
    /// The same options with another [`SpecialStyle`].
    pub fn with_style(mut self, style: SpecialStyle) -> Self {
        self.style = style;
        self
    }
}

/// A tokenised, padded batch.
#[derive(Debug)]
pub struct TextBatch {
    /// Token ids, `[B, L]` Int64.
    pub input_ids: Tensor,
    /// 1 for a token, 0 for padding, `[B, L]` Int64.
    pub attention_mask: Tensor,
    /// Number of real tokens (special tokens included) of each row.
    pub lengths: Vec<usize>,
}

impl TextBatch {
    /// The batch on another device.
    pub fn to_device(&self, device: tch::Device) -> TextBatch {
        TextBatch {
            input_ids: self.input_ids.to_device(device),
            attention_mask: self.attention_mask.to_device(device),
            lengths: self.lengths.clone(),
        }
    }
}

/// A BERT-style WordPiece tokenizer on the `tokenizers` crate.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    cls: i64,
    sep: i64,
    pad: i64,
    mask: i64,
    unk: i64,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json` (`.json`), or builds the bert-base-uncased pipeline
    /// (BertNormalizer with lowercasing, accent stripping and CJK splitting, BertPreTokenizer,
    /// WordPiece with `[UNK]` and 100 chars per word) over a `vocab.txt` (any other name).
    /// A directory is looked into for `tokenizer.json`, then `vocab.txt`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            for name in ["tokenizer.json", "vocab.txt"] {
                if path.join(name).is_file() {
                    return Self::from_file(path.join(name));
                }
            }
            return Err(tok_err(
                path,
                "directory holds no tokenizer.json or vocab.txt",
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| VlpError::io(path, e))?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let mut inner = if is_json {
            let mut t = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| tok_err(path, e))?;
            // Our own code pads, truncates and adds the special tokens.
            t.with_truncation(None).map_err(|e| tok_err(path, e))?;
            t.with_padding(None);
            t
        } else {
            Self::wordpiece_pipeline(path, &bytes)?
        };
        // Never let the file's post-processor add special tokens: encode() passes `false`, but
        // make the intent explicit for anyone calling `inner()`.
        inner.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        let lookup = |names: &[&str]| -> Result<i64> {
            names
                .iter()
                .find_map(|n| inner.token_to_id(n))
                .map(i64::from)
                .ok_or_else(|| tok_err(path, format!("vocabulary has no {} token", names[0])))
        };
        Ok(Tokenizer {
            cls: lookup(&["[CLS]", "<s>"])?,
            sep: lookup(&["[SEP]", "</s>"])?,
            pad: lookup(&["[PAD]", "<pad>"])?,
            mask: lookup(&["[MASK]", "<mask>"])?,
            unk: lookup(&["[UNK]", "<unk>"])?,
            path: path.to_path_buf(),
            inner,
        })
    }

    fn wordpiece_pipeline(path: &Path, bytes: &[u8]) -> Result<tokenizers::Tokenizer> {
        let vocab = WordPiece::read_bytes(bytes).map_err(|e| tok_err(path, e))?;
        if vocab.is_empty() {
            return Err(tok_err(path, "empty vocabulary"));
        }
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(MAX_INPUT_CHARS_PER_WORD)
            .build()
            .map_err(|e| tok_err(path, e))?;
        let mut t = tokenizers::Tokenizer::new(model);
        t.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
        t.with_pre_tokenizer(Some(BertPreTokenizer));
        t.with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
        // As BertTokenizer registers them: matched verbatim in the text, skipped by decode.
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .filter(|s| t.token_to_id(s).is_some())
            .map(|s| AddedToken::from(*s, true))
            .collect();
        t.add_special_tokens(&specials);
        Ok(t)
    }

    /// The file the tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying `tokenizers` tokenizer (no truncation, padding or post-processor set).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Adds special tokens after the vocabulary, as BLIP's `init_tokenizer` does with
    /// `add_special_tokens({'bos_token': '[DEC]'})` and `{'additional_special_tokens': ['[ENC]']}`:
    /// on bert-base-uncased, `[DEC]` = 30522 and `[ENC]` = 30523. Returns the ids, in order (a token
    /// already known keeps its id). Added tokens are matched verbatim in the raw text.
    pub fn add_special_tokens(&mut self, tokens: &[&str]) -> Vec<i64> {
        for t in tokens {
            if self.inner.token_to_id(t).is_none() {
                self.inner.add_special_tokens(&[AddedToken::from(*t, true)]);
            }
        }
        tokens
            .iter()
            .map(|t| self.inner.token_to_id(t).map_or(self.unk, i64::from))
            .collect()
    }

    /// The id of a token (vocabulary or added), if any.
    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// The token of an id, if any.
    pub fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
    }

    /// Vocabulary size, added tokens included (the embedding table's row count).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `[CLS]`.
    pub fn cls_id(&self) -> i64 {
        self.cls
    }
    /// Id of `[SEP]`.
    pub fn sep_id(&self) -> i64 {
        self.sep
    }
    /// Id of `[PAD]`.
    pub fn pad_id(&self) -> i64 {
        self.pad
    }
    /// Id of `[MASK]`.
    pub fn mask_id(&self) -> i64 {
        self.mask
    }
    /// Id of `[UNK]`.
    pub fn unk_id(&self) -> i64 {
        self.unk
    }

    /// Token ids of `text` without any special token and without truncation.
    pub fn tokenize(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(&self.path, e))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// One sequence with its special tokens, truncated to `max_length` (special tokens included),
    /// keeping the head as `transformers` does.
    pub fn encode(
        &self,
        text: &str,
        style: SpecialStyle,
        max_length: Option<usize>,
    ) -> Result<Vec<i64>> {
        let mut body = self.tokenize(text)?;
        if let Some(max) = max_length {
            let budget = max.checked_sub(style.num_special()).ok_or_else(|| {
                VlpError::input(
                    "max_length",
                    format!(
                        "{max} leaves no room for the {} special tokens",
                        style.num_special()
                    ),
                )
            })?;
            body.truncate(budget);
        }
        let mut ids = Vec::with_capacity(body.len() + 2);
        if style != SpecialStyle::None {
            ids.push(self.cls);
        }
        ids.extend(body);
        if style == SpecialStyle::ClsSep {
            ids.push(self.sep);
        }
        Ok(ids)
    }

    /// Encodes and pads a batch to `[B, L]` Int64 tensors on the CPU.
    pub fn encode_batch(&self, texts: &[&str], opts: &EncodeOptions) -> Result<TextBatch> {
        let seqs = texts
            .iter()
            .map(|t| self.encode(t, opts.style, opts.max_length))
            .collect::<Result<Vec<_>>>()?;
        pad_batch(&seqs, self.pad, opts.padding)
    }

    /// Ids back to text with the tokenizer's decoder (WordPiece: `##` pieces joined, spaces before
    /// punctuation cleaned up); `skip_special` drops `[CLS]`, `[SEP]`, `[PAD]`, `[UNK]`, `[MASK]`
    /// and the added special tokens.
    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids = ids
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| VlpError::input("ids", format!("bad token id {i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        self.inner
            .decode(&ids, skip_special)
            .map_err(|e| tok_err(&self.path, e))
    }
}

/// Pads id sequences on the right with `pad_id` into `[B, L]` Int64 `input_ids` and
/// `attention_mask` tensors.
pub fn pad_batch(seqs: &[Vec<i64>], pad_id: i64, padding: Padding) -> Result<TextBatch> {
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let width = match padding {
        Padding::Longest => longest,
        Padding::MaxLength(n) => {
            if longest > n {
                return Err(VlpError::input(
                    "texts",
                    format!("a sequence has {longest} tokens, more than padding length {n}: set max_length to truncate"),
                ));
            }
            n
        }
    };
    let mut ids = Vec::with_capacity(seqs.len() * width);
    let mut mask = Vec::with_capacity(seqs.len() * width);
    for s in seqs {
        ids.extend_from_slice(s);
        ids.extend(std::iter::repeat_n(pad_id, width - s.len()));
        mask.extend(std::iter::repeat_n(1i64, s.len()));
        mask.extend(std::iter::repeat_n(0i64, width - s.len()));
    }
    let shape = [seqs.len() as i64, width as i64];
    Ok(TextBatch {
        input_ids: Tensor::from_slice(&ids).view(shape),
        attention_mask: Tensor::from_slice(&mask).view(shape),
        lengths,
    })
}

fn tok_err(path: &Path, msg: impl std::fmt::Display) -> VlpError {
    VlpError::Tokenizer {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

// ------------------------------------------------------------------------------------------------
// Caption / question normalisation of the official loaders.
// ------------------------------------------------------------------------------------------------

/// Characters ALBEF's `pre_caption`/`pre_question` delete: `,.'!?"()*#:;~`.
const ALBEF_PUNCT: &[char] = &[
    ',', '.', '\'', '!', '?', '"', '(', ')', '*', '#', ':', ';', '~',
];
/// Characters BLIP's `pre_caption` turns into spaces and `pre_question` deletes: `.!"()*#:;~`.
const BLIP_PUNCT: &[char] = &['.', '!', '"', '(', ')', '*', '#', ':', ';', '~'];

/// Python's `str.isspace` (what `\s` matches in a `str` regex): Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `re.sub(r"\s{2,}", " ", s)`: runs of two or more whitespace characters become one space.
fn collapse_runs(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if py_space(chars[i]) {
            let mut j = i;
            while j < chars.len() && py_space(chars[j]) {
                j += 1;
            }
            if j - i >= 2 {
                out.push(' ');
            } else {
                out.push(chars[i]);
            }
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// `' '.join(s.split(' ')[:max_words])` when there are more words than that.
fn truncate_words(s: &str, max_words: usize) -> String {
    let words: Vec<&str> = s.split(' ').collect();
    if words.len() > max_words {
        words[..max_words].join(" ")
    } else {
        s.to_string()
    }
}

/// ALBEF's `pre_caption` (`dataset/utils.py`): lowercase, delete `,.'!?"()*#:;~`, `-` and `/` to
/// spaces, `<person>` to `person`, whitespace runs to one space, strip, keep `max_words` words.
pub fn pre_caption(caption: &str, max_words: usize) -> String {
    let s: String = caption
        .to_lowercase()
        .chars()
        .filter(|c| !ALBEF_PUNCT.contains(c))
        .map(|c| if c == '-' || c == '/' { ' ' } else { c })
        .collect();
    let s = collapse_runs(&s.replace("<person>", "person"));
    truncate_words(s.trim_end_matches('\n').trim_matches(' '), max_words)
}

/// ALBEF's `pre_question`: lowercase, delete `,.'!?"()*#:;~`, `-` and `/` to spaces, strip
/// trailing spaces, keep `max_words` words (split on single spaces).
pub fn pre_question(question: &str, max_words: usize) -> String {
    let s: String = question
        .to_lowercase()
        .chars()
        .filter(|c| !ALBEF_PUNCT.contains(c))
        .map(|c| if c == '-' || c == '/' { ' ' } else { c })
        .collect();
    truncate_words(s.trim_end_matches(' '), max_words)
}

/// BLIP's `pre_caption` (`data/utils.py`): lowercase, `.!"()*#:;~` to spaces, whitespace runs to
/// one space, strip, keep `max_words` words (commas, apostrophes, `-`, `/` stay).
pub fn pre_caption_blip(caption: &str, max_words: usize) -> String {
    let s: String = caption
        .to_lowercase()
        .chars()
        .map(|c| if BLIP_PUNCT.contains(&c) { ' ' } else { c })
        .collect();
    let s = collapse_runs(&s);
    truncate_words(s.trim_end_matches('\n').trim_matches(' '), max_words)
}

/// BLIP's `pre_question`: lowercase, delete `.!"()*#:;~`, strip trailing spaces, keep `max_words`.
pub fn pre_question_blip(question: &str, max_words: usize) -> String {
    let s: String = question
        .to_lowercase()
        .chars()
        .filter(|c| !BLIP_PUNCT.contains(c))
        .collect();
    truncate_words(s.trim_end_matches(' '), max_words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> Option<PathBuf> {
        match crate::assets::minilm_dir() {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    #[test]
    fn pre_caption_albef() {
        assert_eq!(
            pre_caption("  A man, riding a HORSE -- on the beach!\n", 30),
            "a man riding a horse on the beach"
        );
        assert_eq!(
            pre_caption("<person> holds a cat/dog", 30),
            "person holds a cat dog"
        );
        assert_eq!(pre_caption("one two three four", 2), "one two");
        // A single tab is not a run: it stays.
        assert_eq!(pre_caption("a\tb", 5), "a\tb");
    }

    #[test]
    fn pre_question_keeps_inner_double_spaces() {
        // No whitespace collapsing in pre_question: the empty word counts.
        assert_eq!(pre_question("What  is it?  ", 2), "what ");
        assert_eq!(
            pre_question("Is the x-ray/scan ok?", 10),
            "is the x ray scan ok"
        );
    }

    #[test]
    fn blip_variants() {
        assert_eq!(
            pre_caption_blip("A dog's toy, (red)!", 30),
            "a dog's toy, red"
        );
        assert_eq!(pre_question_blip("What's this?.", 30), "what's this?");
    }

    #[test]
    fn pad_batch_shapes_and_masks() {
        let b = pad_batch(&[vec![5, 6, 7], vec![8]], 0, Padding::Longest).unwrap();
        assert_eq!(b.input_ids.size(), [2, 3]);
        assert_eq!(
            Vec::<i64>::try_from(b.input_ids.flatten(0, -1)).unwrap(),
            [5, 6, 7, 8, 0, 0]
        );
        assert_eq!(
            Vec::<i64>::try_from(b.attention_mask.flatten(0, -1)).unwrap(),
            [1, 1, 1, 1, 0, 0]
        );
        assert_eq!(b.lengths, [3, 1]);
        let b = pad_batch(&[vec![5]], 9, Padding::MaxLength(4)).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(b.input_ids.flatten(0, -1)).unwrap(),
            [5, 9, 9, 9]
        );
        assert!(pad_batch(&[vec![1, 2, 3]], 0, Padding::MaxLength(2)).is_err());
        let empty = pad_batch(&[], 0, Padding::Longest).unwrap();
        assert_eq!(empty.input_ids.size(), [0, 0]);
    }

    #[test]
    fn special_styles_and_truncation() {
        let Some(dir) = minilm() else { return };
        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let body = tok.tokenize("a man riding a horse").unwrap();
        assert_eq!(body, [1037, 2158, 5559, 1037, 3586]);
        let cs = tok
            .encode("a man riding a horse", SpecialStyle::ClsSep, Some(4))
            .unwrap();
        assert_eq!(cs, [101, 1037, 2158, 102]);
        let co = tok
            .encode("a man riding a horse", SpecialStyle::ClsOnly, Some(4))
            .unwrap();
        assert_eq!(co, [101, 1037, 2158, 5559]);
        let none = tok
            .encode("a man riding a horse", SpecialStyle::None, Some(4))
            .unwrap();
        assert_eq!(none, [1037, 2158, 5559, 1037]);
        assert!(tok.encode("x", SpecialStyle::ClsSep, Some(1)).is_err());
        assert_eq!(
            (
                tok.cls_id(),
                tok.sep_id(),
                tok.pad_id(),
                tok.unk_id(),
                tok.mask_id()
            ),
            (101, 102, 0, 100, 103)
        );
    }

    #[test]
    fn errors_name_the_file() {
        let err = Tokenizer::from_file("/nonexistent/dir/tokenizer.json").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/dir/tokenizer.json"),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("vlp-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("broken_tokenizer.json");
        std::fs::write(&bad, "{not json").unwrap();
        let err = Tokenizer::from_file(&bad).unwrap_err();
        assert!(matches!(err, VlpError::Tokenizer { .. }), "{err:?}");
        assert!(err.to_string().contains("broken_tokenizer.json"), "{err}");
        let novocab = dir.join("vocab.txt");
        std::fs::write(&novocab, "hello\nworld\n").unwrap();
        let err = Tokenizer::from_file(&novocab).unwrap_err();
        assert!(
            err.to_string().contains("vocab.txt") && err.to_string().contains("no [CLS]"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
