//! Pure metric functions: harmonic mean, n-gram entropy (fluency, GE), word
//! tokenisation for it, and TF-IDF cosine similarity (consistency, RS).

use std::collections::HashMap;

/// Harmonic mean; 0 if any value is 0 (or negative), as in MEMIT's `summarize.py`
/// (`scipy.stats.hmean` of non-negative scores).
pub fn harmonic_mean(values: &[f64]) -> f64 {
    if values.is_empty() || values.iter().any(|&v| v <= 0.0) {
        return 0.0;
    }
    values.len() as f64 / values.iter().map(|v| 1.0 / v).sum::<f64>()
}

/// Mean of the values that exist, `None` if none does.
pub fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Common abbreviations after which a period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd",
    "co", "corp", "no", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "u.s", "u.k", "mt", "ft",
];

/// Splits text into sentences the way NLTK's punkt mostly does for English: after
/// `.`, `!` or `?` (and closing quotes or brackets) followed by whitespace and a
/// capital letter, digit or opening quote, unless the word before the period is a
/// common abbreviation or a single letter (an initial).
pub fn split_sentences(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | ']' | '”' | '’') {
                j += 1;
            }
            let mut k = j;
            while k < chars.len() && chars[k].1.is_whitespace() {
                k += 1;
            }
            let next_starts = k < chars.len()
                && k > j
                && (chars[k].1.is_uppercase()
                    || chars[k].1.is_ascii_digit()
                    || matches!(chars[k].1, '"' | '\'' | '(' | '“'));
            let word = text[start..pos]
                .rsplit(|ch: char| ch.is_whitespace())
                .next()
                .unwrap_or("");
            let word = word.trim_start_matches(['(', '"', '\'']).to_lowercase();
            let abbreviation =
                c == '.' && (ABBREVIATIONS.contains(&word.as_str()) || word.chars().count() == 1);
            if next_starts && !abbreviation {
                let end = chars.get(j).map_or(text.len(), |&(p, _)| p);
                out.push(&text[start..end]);
                start = chars[k].0;
                i = k;
                continue;
            }
        }
        i += 1;
    }
    if start < text.len() && !text[start..].trim().is_empty() {
        out.push(&text[start..]);
    }
    out
}

/// NLTK's Treebank word tokeniser (`NLTKWordTokenizer`) on one sentence: quotes,
/// punctuation, brackets and contractions become tokens of their own.
pub fn treebank_tokenize(sentence: &str) -> Vec<String> {
    use regex::Regex;
    use std::sync::OnceLock;
    type Rules = Vec<(Regex, &'static str)>;
    static RULES: OnceLock<(Rules, Rules)> = OnceLock::new();
    let (before, after) = RULES.get_or_init(|| {
        let r = |p: &str, s: &'static str| (Regex::new(p).expect("valid regex"), s);
        let before = vec![
            // Starting quotes.
            r(r"([«“‘„]|`+)", " $1 "),
            r(r#"^""#, "``"),
            r(r"(``)", " $1 "),
            r(r#"([ (\[{<])("|'')"#, "$1 `` "),
            // Punctuation.
            r(r#"([^.])(\.)([\]\)}>"'»”’ ]*)\s*$"#, "$1 $2 $3 "),
            r(r"([:,])([^\d])", " $1 $2"),
            r(r"([:,])$", " $1 "),
            r(r"\.{2,}", " $0 "),
            r(r"[;@#$%&]", " $0 "),
            r(r"[?!]", " $0 "),
            r(r"([^'])' ", "$1 ' "),
            r(r"[*]", " $0 "),
            // Brackets and dashes.
            r(r"[\]\[\(\)\{\}<>]", " $0 "),
            r(r"--", " -- "),
        ];
        let after = vec![
            // Ending quotes.
            r(r"([»”’])", " $1 "),
            r(r"''", " '' "),
            r(r#"""#, " '' "),
            r(r"([^' ])('[sS]|'[mM]|'[dD]|') ", "$1 $2 "),
            r(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "$1 $2 "),
            // Contractions.
            r(r"(?i)\b(can)(not)\b", " $1 $2 "),
            r(r"(?i)\b(d)('ye)\b", " $1 $2 "),
            r(r"(?i)\b(gim)(me)\b", " $1 $2 "),
            r(r"(?i)\b(gon)(na)\b", " $1 $2 "),
            r(r"(?i)\b(got)(ta)\b", " $1 $2 "),
            r(r"(?i)\b(lem)(me)\b", " $1 $2 "),
            r(r"(?i)\b(more)('n)\b", " $1 $2 "),
            r(r"(?i)\b(wan)(na)\s", " $1 $2 "),
            r(r"(?i) ('t)(is)\b", " $1 $2 "),
            r(r"(?i) ('t)(was)\b", " $1 $2 "),
        ];
        (before, after)
    });
    let mut text = sentence.to_owned();
    for (re, rep) in before {
        text = re.replace_all(&text, *rep).into_owned();
    }
    // Pad so the ending-quote rules see a space after the last token.
    text = format!(" {text} ");
    for (re, rep) in after {
        text = re.replace_all(&text, *rep).into_owned();
    }
    text.split_whitespace().map(str::to_owned).collect()
}

/// Word tokens as `nltk.word_tokenize` gives them: sentences, then Treebank tokens.
pub fn word_tokenize(text: &str) -> Vec<String> {
    split_sentences(text)
        .into_iter()
        .flat_map(treebank_tokenize)
        .collect()
}

/// Entropy (bits) of the n-gram frequency distribution of `tokens`.
pub fn ngram_entropy(tokens: &[String], n: usize) -> f64 {
    if tokens.len() < n {
        return 0.0;
    }
    let mut counts: HashMap<&[String], usize> = HashMap::new();
    for w in tokens.windows(n) {
        *counts.entry(w).or_default() += 1;
    }
    let total = (tokens.len() - n + 1) as f64;
    counts
        .values()
        .map(|&c| {
            let f = c as f64 / total;
            -f * f.log2()
        })
        .sum()
}

/// MEMIT's fluency of one text: `(2/3·H₂ + 4/3·H₃) / 2` over word n-grams.
pub fn fluency(text: &str) -> f64 {
    let tokens = word_tokenize(text);
    (2.0 / 3.0 * ngram_entropy(&tokens, 2) + 4.0 / 3.0 * ngram_entropy(&tokens, 3)) / 2.0
}

/// A TF-IDF vectoriser with a fixed vocabulary and IDF table, as scikit-learn's
/// `TfidfVectorizer` with MEMIT's `tfidf_vocab.json` and `idf.npy`: lower-cased tokens
/// of two or more word characters, raw counts × IDF, L2-normalised.
pub struct Tfidf {
    pub vocab: HashMap<String, usize>,
    pub idf: Vec<f64>,
}

impl Tfidf {
    fn vector(&self, text: &str) -> HashMap<usize, f64> {
        use regex::Regex;
        use std::sync::OnceLock;
        static TOKEN: OnceLock<Regex> = OnceLock::new();
        let token = TOKEN.get_or_init(|| Regex::new(r"\b\w\w+\b").expect("valid regex"));
        let mut v: HashMap<usize, f64> = HashMap::new();
        for m in token.find_iter(&text.to_lowercase()) {
            if let Some(&i) = self.vocab.get(m.as_str()) {
                *v.entry(i).or_default() += 1.0;
            }
        }
        for (i, x) in v.iter_mut() {
            *x *= self.idf.get(*i).copied().unwrap_or(0.0);
        }
        v
    }

    /// Cosine similarity of the two texts' TF-IDF vectors (0 when either is empty).
    pub fn similarity(&self, a: &str, b: &str) -> f64 {
        let (va, vb) = (self.vector(a), self.vector(b));
        let norm = |v: &HashMap<usize, f64>| v.values().map(|x| x * x).sum::<f64>().sqrt();
        let (na, nb) = (norm(&va), norm(&vb));
        if na == 0.0 || nb == 0.0 {
            return 0.0;
        }
        va.iter()
            .map(|(i, x)| x * vb.get(i).copied().unwrap_or(0.0))
            .sum::<f64>()
            / na
            / nb
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmonic_mean_with_a_zero_is_zero() {
        assert_eq!(harmonic_mean(&[0.5, 0.0, 1.0]), 0.0);
        assert!((harmonic_mean(&[1.0, 0.5]) - 2.0 / 3.0).abs() < 1e-12);
        assert!((harmonic_mean(&[24.0, 22.0, 78.2]) - 30.027344128769514).abs() < 1e-9);
    }

    #[test]
    fn ngram_entropy_of_a_known_text() {
        // "the cat sat on the mat": 5 distinct bigrams, 4 distinct trigrams, all once.
        let tokens = word_tokenize("the cat sat on the mat");
        assert_eq!(tokens.len(), 6);
        assert!((ngram_entropy(&tokens, 2) - 5f64.log2()).abs() < 1e-12);
        assert!((ngram_entropy(&tokens, 3) - 2.0).abs() < 1e-12);
        let want = (2.0 / 3.0 * 5f64.log2() + 4.0 / 3.0 * 2.0) / 2.0;
        assert!((fluency("the cat sat on the mat") - want).abs() < 1e-12);
        // Repetition lowers it: "a b a b a b" has 2 distinct bigrams (3 and 2 times).
        let rep = word_tokenize("a b a b a b");
        let h2 = -(0.6f64 * 0.6f64.log2() + 0.4 * 0.4f64.log2());
        assert!((ngram_entropy(&rep, 2) - h2).abs() < 1e-12);
    }

    #[test]
    fn word_tokenize_follows_the_treebank_rules() {
        let t = word_tokenize("He said \"it's John's car\", didn't he? Yes. Mr. Smith paid $5.");
        let want = [
            "He", "said", "``", "it", "'s", "John", "'s", "car", "''", ",", "did", "n't", "he",
            "?", "Yes", ".", "Mr.", "Smith", "paid", "$", "5", ".",
        ];
        assert_eq!(t, want);
        assert_eq!(
            word_tokenize("cannot (maybe) -- 3,000 ok..."),
            ["can", "not", "(", "maybe", ")", "--", "3,000", "ok", "..."]
        );
    }

    #[test]
    fn tfidf_cosine() {
        let t = Tfidf {
            vocab: [
                ("paris".into(), 0),
                ("france".into(), 1),
                ("rome".into(), 2),
            ]
            .into_iter()
            .collect(),
            idf: vec![1.0, 2.0, 3.0],
        };
        assert!((t.similarity("Paris, France", "paris france") - 1.0).abs() < 1e-12);
        assert_eq!(t.similarity("Paris", "Rome"), 0.0);
        // [1, 2, 0] · [0, 2, 3] / (√5 · √13)
        let want = 4.0 / (5f64.sqrt() * 13f64.sqrt());
        assert!((t.similarity("Paris France", "France Rome") - want).abs() < 1e-12);
        assert_eq!(t.similarity("", "Rome"), 0.0);
    }
}
