//! Tokenizers: text to token ids and back, built from what a model file carries.
//!
//! - GGUF `gpt2` vocabularies (byte-level BPE: SmolLM2, Qwen2, Llama 3, GPT-2) become a
//!   Hugging Face `tokenizers` BPE with the pre-tokenizer that `tokenizer.ggml.pre` names.
//! - GGUF `llama` vocabularies (SentencePiece with scores: Gemma 3, Llama 2) use [`spm`],
//!   a transcription of llama.cpp's algorithm, which `tokenizers` cannot express.
//! - Hugging Face folders use their `tokenizer.json` as is.

pub mod chat;
pub mod spm;

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, Value};
use spm::{Spm, TokenType};

#[derive(Clone)]
enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    Spm(Box<Spm>),
}

/// The token ids a chat template puts around a user turn's text
/// ([`Tokenizer::chat_frame`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatFrame {
    pub before: Vec<u32>,
    pub after: Vec<u32>,
}

impl ChatFrame {
    /// Where the user's text lies in `ids`, when `ids` is a prompt in this frame.
    pub fn text_span(&self, ids: &[u32]) -> Option<std::ops::Range<usize>> {
        let (b, a) = (self.before.len(), self.after.len());
        (ids.len() > b + a && ids.starts_with(&self.before) && ids.ends_with(&self.after))
            .then(|| b..ids.len() - a)
    }
}

/// A model's tokenizer, with its special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Inner,
    /// Whether model inputs start with BOS (added by [`Tokenizer::encode`] when asked).
    add_bos: bool,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// The model's Jinja chat template, if it ships one.
    pub chat_template: Option<String>,
    /// Control and user-defined tokens as text, longest first: what a rendered chat
    /// template spells out and [`Tokenizer::encode_chat`] maps back to single ids.
    specials: Vec<(String, u32)>,
}

/// Turn-ending tokens of the common chat formats; generation in a chat stops at them.
const TURN_ENDS: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|endoftext|>",
];

const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

fn string_array(gguf: &GgufFile, key: &str) -> Result<Vec<String>> {
    let arr = gguf
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Format {
            path: gguf.path().into(),
            reason: format!("metadata key {key} is missing"),
        })?;
    arr.iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Format {
            path: gguf.path().into(),
            reason: format!("metadata key {key} is not an array of strings"),
        })
}

fn split_regex(pattern: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(pattern.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    Ok(split.into())
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let opt_u32 = |k: &str| gguf.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let opt_bool = |k: &str| gguf.get(k).and_then(Value::as_bool);
        let bos_id = opt_u32("tokenizer.ggml.bos_token_id");
        let eos_id = opt_u32("tokenizer.ggml.eos_token_id");
        let types: Vec<TokenType> = match gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(a) => a
                .iter()
                .map(|v| TokenType::from_id(v.as_u64().unwrap_or(1)))
                .collect(),
            None => vec![TokenType::Normal; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::Format {
                path: gguf.path().into(),
                reason: format!("{} tokens but {} token types", tokens.len(), types.len()),
            });
        }
        let specials = longest_first(
            tokens
                .iter()
                .zip(&types)
                .enumerate()
                .filter(|(_, (_, t))| matches!(t, TokenType::Control | TokenType::UserDefined))
                .map(|(i, (s, _))| (s.clone(), i as u32)),
        );
        let inner = match model {
            "gpt2" => {
                let merges = string_array(gguf, "tokenizer.ggml.merges")?;
                let pre = gguf
                    .get("tokenizer.ggml.pre")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                Inner::Hf(Box::new(byte_level_bpe(tokens, &merges, pre)?))
            }
            "llama" => {
                let scores: Vec<f32> =
                    match gguf.get("tokenizer.ggml.scores").and_then(Value::as_array) {
                        Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                        None => vec![0.0; tokens.len()],
                    };
                if scores.len() != tokens.len() {
                    return Err(Error::Format {
                        path: gguf.path().into(),
                        reason: format!("{} tokens but {} scores", tokens.len(), scores.len()),
                    });
                }
                let add_space_prefix = opt_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                Inner::Spm(Box::new(Spm::new(tokens, scores, types, add_space_prefix)))
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "tokenizer model '{other}' is not supported (supported: gpt2, llama)"
                )));
            }
        };
        let add_bos = opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
        Ok(Tokenizer {
            inner,
            add_bos: add_bos && bos_id.is_some(),
            bos_id,
            eos_id,
            chat_template: gguf
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_owned),
            specials,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`; its post-processor adds BOS where the model
    /// wants it.
    pub fn from_file(path: &Path, bos_id: Option<u32>, eos_id: Option<u32>) -> Result<Self> {
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let chat_template = path.parent().and_then(chat::template_from_folder);
        Ok(Self::from_hf(tok, bos_id, eos_id, chat_template))
    }

    /// A Hugging Face tokenizer given as the text of its `tokenizer.json` (as a loaded
    /// `transformers` tokenizer's `backend_tokenizer.to_str()` gives it).
    pub fn from_hf_json(
        json: &str,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let tok: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        Ok(Self::from_hf(tok, bos_id, eos_id, chat_template))
    }

    fn from_hf(
        tok: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        chat_template: Option<String>,
    ) -> Self {
        let specials = tok
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (t.content, id));
        Tokenizer {
            inner: Inner::Hf(Box::new(tok)),
            add_bos: false,
            bos_id,
            eos_id,
            chat_template,
            specials: longest_first(specials),
        }
    }

    /// Encodes text. With `special`, the ids are a model input (BOS first where the model
    /// expects it); without, just the text's tokens.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if special && self.add_bos {
            ids.extend(self.bos_id);
        }
        match &self.inner {
            Inner::Hf(t) => ids.extend(t.encode_fast(text, special).map_err(tok_err)?.get_ids()),
            Inner::Spm(s) => ids.extend(s.encode(text)),
        }
        Ok(ids)
    }

    /// Encodes text that spells out special tokens (a rendered chat template): each
    /// special's text becomes its id, the text between is encoded plainly, and BOS is
    /// put first where the model wants it and the text did not already start with it.
    pub fn encode_chat(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special; at equal positions the longest (the list's order).
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, usize::MAX - len));
            let (at, len, id) = next.unwrap_or((rest.len(), 0, 0));
            if at > 0 {
                ids.extend(self.encode(&rest[..at], false)?);
            }
            if len == 0 {
                break;
            }
            ids.push(id);
            rest = &rest[at + len..];
        }
        if self.adds_bos()
            && let Some(b) = self.bos_id
            && ids.first() != Some(&b)
        {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    /// The token ids of `user` asked as one user turn through the model's chat
    /// template, ending where the assistant's answer begins.
    pub fn chat_prompt(&self, user: &str) -> Result<Vec<u32>> {
        let source = self.chat_template.clone().ok_or_else(|| {
            Error::Input(
                "this model has no chat template (GGUF tokenizer.chat_template, or \
                 chat_template in the folder's tokenizer_config.json); --chat needs one"
                    .into(),
            )
        })?;
        let piece = |id: Option<u32>| id.and_then(|i| self.piece(i)).unwrap_or_default();
        let template = chat::ChatTemplate {
            source,
            bos_token: piece(self.bos_id),
            eos_token: piece(self.eos_id),
        };
        let text = template.render(&[chat::Message::user(user)], true)?;
        self.encode_chat(&text)
    }

    /// The tokens the chat template puts before and after a user turn's text in
    /// [`Tokenizer::chat_prompt`] (`None` without a template): what two prompts of
    /// different text share at their start and at their end.
    pub fn chat_frame(&self) -> Result<Option<ChatFrame>> {
        if self.chat_template.is_none() {
            return Ok(None);
        }
        let (a, b) = (self.chat_prompt("A")?, self.chat_prompt("B")?);
        let before = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let after = a
            .iter()
            .rev()
            .zip(b.iter().rev())
            .take_while(|(x, y)| x == y)
            .count()
            .min(a.len().min(b.len()) - before);
        Ok(Some(ChatFrame {
            before: a[..before].to_vec(),
            after: a[a.len() - after..].to_vec(),
        }))
    }

    /// Tokens that end an assistant's turn: EOS and the chat formats' turn ends.
    pub fn turn_ends(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self.eos_id.into_iter().collect();
        for (s, id) in &self.specials {
            if TURN_ENDS.contains(&s.as_str()) && !out.contains(id) {
                out.push(*id);
            }
        }
        out
    }

    /// Decodes ids to text (special tokens included as their text; cut UTF-8 sequences
    /// become U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.inner {
            Inner::Hf(t) => t.decode(ids, false).unwrap_or_default(),
            Inner::Spm(s) => s.decode(ids),
        }
    }

    /// Decodes ids to text without the special tokens (BOS, EOS, control tokens), as
    /// transformers' `decode(ids, skip_special_tokens=True)` does.
    pub fn decode_text(&self, ids: &[u32]) -> String {
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| {
                Some(id) != self.bos_id
                    && Some(id) != self.eos_id
                    && !self.specials.iter().any(|(_, s)| *s == id)
            })
            .collect();
        self.decode(&kept)
    }

    /// The vocabulary string of a token (`Ġ`/`▁` left as stored).
    pub fn piece(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Hf(t) => t.id_to_token(id),
            Inner::Spm(s) => s.piece(id).map(str::to_owned),
        }
    }

    /// The id of a vocabulary string (`Ġ`/`▁` as stored), if it is one.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_id(piece),
            Inner::Spm(s) => s.token_id(piece),
        }
    }

    /// The token that starts a document: BOS where model inputs begin with it, else
    /// GPT-style `<|endoftext|>` if the vocabulary has it, else EOS or BOS.
    pub fn document_start(&self) -> Option<u32> {
        if self.adds_bos() {
            return self.bos_id;
        }
        self.token_id("<|endoftext|>")
            .or(self.eos_id)
            .or(self.bos_id)
    }

    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Spm(s) => s.vocab_size(),
        }
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (a Hugging Face
    /// folder), converting a SentencePiece vocabulary to its `tokenizers` equivalent.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let add_bos = self.adds_bos();
        let hf = match &self.inner {
            Inner::Hf(t) => {
                let mut t = (**t).clone();
                if self.add_bos
                    && let Some(b) = self.bos_id
                {
                    let piece = t.id_to_token(b).unwrap_or_default();
                    let post = tokenizers::processors::template::TemplateProcessing::builder()
                        .try_single(format!("{piece} $A"))
                        .map_err(tok_err)?
                        .special_tokens(vec![(piece, b)])
                        .build()
                        .map_err(tok_err)?;
                    t.with_post_processor(Some(post));
                }
                t
            }
            Inner::Spm(s) => s
                .to_hf(self.bos_id, self.add_bos)
                .map_err(Error::Tokenizer)?,
        };
        let path = dir.join("tokenizer.json");
        hf.save(&path, false)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let piece = |id: Option<u32>| id.and_then(|i| self.piece(i));
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": piece(self.bos_id),
            "eos_token": piece(self.eos_id),
            "add_bos_token": add_bos,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "chat_template": self.chat_template,
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).expect("json"))
            .map_err(|e| Error::io(&path, e))?;
        // transformers 5 reads the template from its own file (and 4.4x writes it there).
        if let Some(t) = &self.chat_template {
            let path = dir.join("chat_template.jinja");
            std::fs::write(&path, t).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Whether model inputs get BOS prepended.
    pub fn adds_bos(&self) -> bool {
        match &self.inner {
            Inner::Hf(t) if !self.add_bos => self.bos_id.is_some_and(|bos| {
                t.encode_fast("a", true)
                    .is_ok_and(|e| e.get_ids().first() == Some(&bos))
            }),
            _ => self.add_bos,
        }
    }
}

/// Specials sorted longest first (then by id), empty strings dropped.
fn longest_first(specials: impl Iterator<Item = (String, u32)>) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = specials.filter(|(s, _)| !s.is_empty()).collect();
    v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    v
}

/// A byte-level BPE (GPT-2 style) from a GGUF vocabulary and merges, with the
/// pre-tokenizer llama.cpp uses for `pre`.
fn byte_level_bpe(
    tokens: Vec<String>,
    merges: &[String],
    pre: &str,
) -> Result<tokenizers::Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| Error::Tokenizer(format!("malformed merge '{m}'")))
        })
        .collect::<Result<Vec<_>>>()?;
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let (pre_tokenizer, ignore_merges): (PreTokenizerWrapper, bool) = match pre {
        "default" | "gpt2" | "gpt-2" | "olmo" | "jais" => (byte_level(true).into(), false),
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
            (
                Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
                false,
            )
        }
        "qwen2" | "deepseek-r1-qwen" => (
            Sequence::new(vec![split_regex(QWEN2_REGEX)?, byte_level(false).into()]).into(),
            false,
        ),
        "llama-bpe" | "llama3" | "smaug-bpe" => (
            Sequence::new(vec![split_regex(LLAMA3_REGEX)?, byte_level(false).into()]).into(),
            true,
        ),
        other => {
            return Err(Error::Tokenizer(format!(
                "pre-tokenizer '{other}' (tokenizer.ggml.pre) is not supported; supported: \
                 default, gpt2, smollm, starcoder, qwen2, llama-bpe"
            )));
        }
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(tok_err)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tok)
}

/// MEMIT's clean-up of generated text: NFKD, paragraph breaks as spaces (for generated
/// prefixes and for scoring generations alike).
pub fn clean(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    text.nfkd().collect::<String>().replace("\n\n", " ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn clean_normalises_like_memit() {
        assert_eq!(super::clean("Caf\u{e9}\n\nBar"), "Cafe\u{301} Bar");
    }
}
