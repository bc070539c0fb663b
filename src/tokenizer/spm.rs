//! SentencePiece-style BPE with scores, as llama.cpp runs it on GGUF vocabularies
//! (`tokenizer.ggml.model = "llama"`, e.g. Gemma 3): spaces become `▁`, the text is split
//! into UTF-8 characters, and adjacent symbols are merged, highest token score first
//! (leftmost on ties), while their concatenation is a token. Characters that never form a
//! token fall back to `<0xXX>` byte tokens.
//!
//! User-defined tokens (GGUF token type 4, e.g. Gemma's runs of spaces and newlines) are
//! cut out of the text first, longest first, exactly as llama.cpp does with
//! `parse_special = false`; control tokens such as `<bos>` are never matched in text.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// GGUF token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    pub fn from_id(id: u64) -> Self {
        match id {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

/// A SentencePiece vocabulary with scores.
#[derive(Clone)]
pub struct Spm {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    index: HashMap<String, u32>,
    byte_tokens: [Option<u32>; 256],
    /// User-defined tokens, longest text first.
    user_defined: Vec<(String, u32)>,
    add_space_prefix: bool,
}

const SPACE: &str = "\u{2581}";

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: highest score first, then the leftmost pair.
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<TokenType>,
        add_space_prefix: bool,
    ) -> Self {
        let mut index = HashMap::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            // Later duplicates win, as in llama.cpp's token_to_id map.
            index.insert(p.clone(), i as u32);
        }
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = index
                .get(&format!("<0x{b:02X}>"))
                .or_else(|| index.get(&(b as u8 as char).to_string()))
                .copied();
        }
        let mut user_defined: Vec<(String, u32)> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == TokenType::UserDefined)
            .map(|(i, _)| (pieces[i].clone(), i as u32))
            .filter(|(s, _)| !s.is_empty())
            .collect();
        user_defined.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Spm {
            pieces,
            scores,
            types,
            index,
            byte_tokens,
            user_defined,
            add_space_prefix,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// Encodes text without special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        enum Frag<'a> {
            Raw(&'a str),
            Tok(u32),
        }
        let mut frags = vec![Frag::Raw(text)];
        for (s, id) in &self.user_defined {
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Frag::Raw(raw) if raw.contains(s.as_str()) => {
                        let mut rest = raw;
                        while let Some(pos) = rest.find(s.as_str()) {
                            if pos > 0 {
                                next.push(Frag::Raw(&rest[..pos]));
                            }
                            next.push(Frag::Tok(*id));
                            rest = &rest[pos + s.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Frag::Raw(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        let mut out = Vec::new();
        let mut prev_special = true;
        for f in frags {
            match f {
                Frag::Raw(raw) => {
                    let mut t = String::with_capacity(raw.len() + 3);
                    if self.add_space_prefix && prev_special {
                        t.push(' ');
                    }
                    t.push_str(raw);
                    self.encode_fragment(&t.replace(' ', SPACE), &mut out);
                    prev_special = false;
                }
                Frag::Tok(id) => {
                    out.push(id);
                    prev_special = true;
                }
            }
        }
        out
    }

    fn encode_fragment(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, ch)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
        }
        if symbols.is_empty() {
            return;
        }
        let mut queue = BinaryHeap::new();
        let try_add = |queue: &mut BinaryHeap<Bigram>,
                       symbols: &[Symbol],
                       l: Option<usize>,
                       r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (a, b) = (&symbols[l], &symbols[r]);
            let piece = &text[a.start..a.start + a.len + b.len];
            if let Some(&id) = self.index.get(piece) {
                queue.push(Bigram {
                    score: self.scores[id as usize],
                    left: l,
                    right: r,
                    size: piece.len(),
                });
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut queue, &symbols, Some(i - 1), Some(i));
        }
        while let Some(bg) = queue.pop() {
            let (ln, rn) = (symbols[bg.left].len, symbols[bg.right].len);
            if ln == 0 || rn == 0 || ln + rn != bg.size {
                continue;
            }
            symbols[bg.left].len += rn;
            symbols[bg.right].len = 0;
            let next = symbols[bg.right].next;
            symbols[bg.left].next = next;
            if let Some(n) = next {
                symbols[n].prev = Some(bg.left);
            }
            let prev = symbols[bg.left].prev;
            try_add(&mut queue, &symbols, prev, Some(bg.left));
            try_add(&mut queue, &symbols, Some(bg.left), next);
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let s = &symbols[k];
            let piece = &text[s.start..s.start + s.len];
            match self.index.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.byte_tokens[b as usize])),
            }
            i = s.next;
        }
    }

    /// A Hugging Face `tokenizers` equivalent (a byte-fallback BPE whose merges are ranked
    /// by the merged piece's score, as transformers converts SentencePiece models), for
    /// writing `tokenizer.json`. User-defined tokens become added tokens, matched first.
    pub fn to_hf(
        &self,
        bos: Option<u32>,
        add_bos: bool,
    ) -> std::result::Result<tokenizers::Tokenizer, String> {
        use tokenizers::decoders::byte_fallback::ByteFallback;
        use tokenizers::decoders::fuse::Fuse;
        use tokenizers::decoders::sequence::Sequence as DecoderSequence;
        use tokenizers::models::bpe::BPE;
        use tokenizers::normalizers::{Prepend, Replace, Sequence as NormSequence};
        use tokenizers::processors::template::TemplateProcessing;
        use tokenizers::{AddedToken, NormalizerWrapper};

        let vocab: tokenizers::models::bpe::Vocab =
            self.index.iter().map(|(p, &i)| (p.clone(), i)).collect();
        let mut merges: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
        for (id, piece) in self.pieces.iter().enumerate() {
            if self.types[id] != TokenType::Normal {
                continue;
            }
            for (split, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(split);
                if let (Some(&li), Some(&ri)) = (self.index.get(l), self.index.get(r)) {
                    merges.push((self.scores[id], li, ri, l, r));
                }
            }
        }
        // Highest score first; within a piece, by the ids of its halves (transformers' order).
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let merges: Vec<(String, String)> = merges
            .into_iter()
            .map(|m| (m.3.to_owned(), m.4.to_owned()))
            .collect();
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = self.types.iter().position(|t| *t == TokenType::Unknown) {
            builder = builder.unk_token(self.pieces[unk].clone());
        }
        let bpe = builder.build().map_err(|e| e.to_string())?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        let replace: NormalizerWrapper =
            Replace::new(" ", SPACE).map_err(|e| e.to_string())?.into();
        let normalizer: NormalizerWrapper = if self.add_space_prefix {
            NormSequence::new(vec![Prepend::new(SPACE.into()).into(), replace]).into()
        } else {
            replace
        };
        tok.with_normalizer(Some(normalizer))
            .map_err(|e| e.to_string())?;
        let decoder = DecoderSequence::new(vec![
            tokenizers::normalizers::Replace::new(SPACE, " ")
                .map_err(|e| e.to_string())?
                .into(),
            ByteFallback::default().into(),
            Fuse::default().into(),
        ]);
        tok.with_decoder(Some(decoder));
        let user: Vec<AddedToken> = self
            .user_defined
            .iter()
            .map(|(s, _)| AddedToken::from(s.clone(), false).normalized(false))
            .collect();
        tok.add_tokens(user).map_err(|e| e.to_string())?;
        let special: Vec<AddedToken> = self
            .types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t, TokenType::Control | TokenType::Unknown))
            .map(|(i, _)| AddedToken::from(self.pieces[i].clone(), true))
            .collect();
        tok.add_special_tokens(special).map_err(|e| e.to_string())?;
        if let (true, Some(b)) = (add_bos, bos) {
            let piece = self.pieces[b as usize].clone();
            let post = TemplateProcessing::builder()
                .try_single(format!("{piece} $A"))
                .and_then(|t| t.try_pair(format!("{piece} $A {piece} $B")))
                .map_err(|e| e.to_string())?
                .special_tokens(vec![(piece, b)])
                .build()
                .map_err(|e| e.to_string())?;
            tok.with_post_processor(Some(post));
        }
        Ok(tok)
    }

    /// The bytes a token stands for: `▁` is a space, `<0xXX>` a raw byte.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.piece(id) else {
            return Vec::new();
        };
        if self.types[id as usize] == TokenType::Byte
            && let Some(hex) = piece.strip_prefix("<0x").and_then(|s| s.strip_suffix('>'))
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            return vec![b];
        }
        piece.replace(SPACE, " ").into_bytes()
    }

    /// Decodes ids to text; cut UTF-8 sequences become U+FFFD, as in Hugging Face's decode.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary where merge order is decided by scores.
    fn toy() -> Spm {
        let pieces = [
            "<unk>",
            "<0x41>",
            "a",
            "b",
            "c",
            "ab",
            "bc",
            "abc",
            "\u{2581}",
            "\u{2581}a",
            "  ",
        ];
        let scores = [
            0.0, 0.0, -1.0, -1.0, -1.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0,
        ];
        let types = [2, 6, 1, 1, 1, 1, 1, 1, 1, 1, 4];
        Spm::new(
            pieces.iter().map(|s| s.to_string()).collect(),
            scores.to_vec(),
            types.iter().map(|&t| TokenType::from_id(t)).collect(),
            false,
        )
    }

    #[test]
    fn merges_follow_scores_not_order() {
        let spm = toy();
        // "bc" (-2) beats "ab" (-3); then "a"+"bc" = "abc" exists.
        assert_eq!(spm.encode("abc"), vec![7]);
        // "ab" alone: merged.
        assert_eq!(spm.encode("ab"), vec![5]);
        // Leading space is a ▁ symbol that merges with 'a'.
        assert_eq!(spm.encode(" a"), vec![9]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_and_user_tokens_split_first() {
        let spm = toy();
        // 'A' is only known as the byte token <0x41>; "Z" has no byte token and is dropped
        // like llama.cpp would emit nothing for a missing byte token.
        assert_eq!(spm.encode("A"), vec![1]);
        // Two spaces are a user-defined token and are cut out before SPM runs.
        assert_eq!(spm.encode("a  b"), vec![2, 10, 3]);
        assert_eq!(spm.decode(&[2, 10, 3]), "a  b");
        assert_eq!(spm.decode(&[9, 1]), " aA");
    }
}
