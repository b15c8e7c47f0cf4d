//! Cutting a streamed answer into sentences, so speech synthesis can start on the first one
//! while the model is still writing the rest.
//!
//! [`SentenceSplitter::push`] takes tokens as they arrive and returns every sentence that is
//! complete; [`SentenceSplitter::finish`] returns what is left. A sentence ends at `。！？；`,
//! at `!`, `?` and `;` followed by a space, at a newline, and at `.` (or `…`) followed by a
//! space and something that does not continue the sentence. Trailing closing quotes and
//! brackets stay with their sentence. Not sentence ends: decimals (`3.14`), dotted words
//! (`example.com`, `e.g.`), common abbreviations and initials (`Mr. Smith`, `J. Doe`), and an
//! ellipsis followed by a lowercase word (`well... maybe`). Chinese needs no spaces (`你好。再见`).
//!
//! Where the end depends on text not yet seen (`3.` may become `3.14`), the splitter waits for
//! the next token, so the sentences do not depend on how the text was cut into tokens.
//! Fragments with fewer than two letters or digits (`1.`, `嗯。`, a lone `!`) are not spoken
//! alone: they join the sentence that follows.

/// Fewer letters/digits than this and a piece joins the next sentence.
const MIN_CHARS: usize = 2;

/// Splits streamed text into sentences; see the module documentation.
#[derive(Debug, Default, Clone)]
pub(crate) struct SentenceSplitter {
    /// Text not yet returned.
    buf: String,
    /// Byte offset in `buf` where scanning resumes (everything before it is decided).
    scan: usize,
    /// Past this many characters without a sentence end, cut at the last comma.
    soft_limit: Option<usize>,
}

enum Scan {
    /// A sentence ends at this byte offset.
    Cut(usize),
    /// Undecidable until more text arrives; resume at this byte offset.
    Wait(usize),
    /// No sentence end in the rest of the buffer.
    Nothing,
}

impl SentenceSplitter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Also cuts sentences longer than `chars` characters at their last comma (`，、,：:`), for
    /// long run-on sentences; such cuts depend on how the text arrives.
    #[cfg(test)]
    pub(crate) fn with_soft_limit(chars: usize) -> Self {
        Self { soft_limit: Some(chars.max(MIN_CHARS)), ..Self::default() }
    }

    /// Adds a token; returns the sentences it completed (trimmed), oldest first.
    pub(crate) fn push(&mut self, token: &str) -> Vec<String> {
        self.buf.push_str(token);
        self.drain(false)
    }

    /// The text is complete: returns what is left (trimmed), if anything. Only the last
    /// sentence can be left (every earlier end was decidable when the text after it arrived).
    pub(crate) fn finish(&mut self) -> Option<String> {
        let rest = self.buf.trim().to_owned();
        self.buf.clear();
        self.scan = 0;
        (!rest.is_empty()).then_some(rest)
    }

    fn drain(&mut self, eof: bool) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match find_end(&self.buf, self.scan, eof) {
                Scan::Cut(end) => {
                    if visible(&self.buf[..end]) < MIN_CHARS {
                        self.scan = end;
                        continue;
                    }
                    out.push(self.take(end));
                }
                Scan::Wait(at) => {
                    self.scan = at;
                    break;
                }
                Scan::Nothing => {
                    self.scan = self.buf.len();
                    if let Some(end) = self.soft_cut() {
                        out.push(self.take(end));
                    }
                    break;
                }
            }
        }
        out
    }

    /// Removes and returns the first `end` bytes, trimmed.
    fn take(&mut self, end: usize) -> String {
        let sentence = self.buf[..end].trim().to_owned();
        self.buf.drain(..end);
        self.scan = 0;
        sentence
    }

    /// Where to cut an over-long sentence: after its last comma, if there is one that leaves
    /// enough on both sides.
    fn soft_cut(&self) -> Option<usize> {
        let limit = self.soft_limit?;
        if self.buf.chars().count() <= limit {
            return None;
        }
        let chars: Vec<(usize, char)> = self.buf.char_indices().collect();
        (0..chars.len()).rev().find_map(|i| {
            let (at, c) = chars[i];
            let next = chars.get(i + 1).map(|&(_, n)| n);
            let comma = matches!(c, '，' | '、' | '：')
                || (matches!(c, ',' | ':') && next.is_some_and(char::is_whitespace));
            let end = at + c.len_utf8();
            (comma && visible(&self.buf[..end]) >= MIN_CHARS).then_some(end)
        })
    }
}

/// Letters and digits (what makes a piece worth speaking).
fn visible(s: &str) -> usize {
    s.chars().filter(|c| c.is_alphanumeric()).count()
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ';' | '。' | '！' | '？' | '；' | '…')
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | '”' | '’' | '」' | '』' | ')' | '）' | ']' | '】' | '》' | '〉')
}

/// Chinese, Japanese and Korean text and full-width forms: no space follows their sentences.
fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30ff}' | '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}'
        | '\u{ac00}'..='\u{d7af}' | '\u{f900}'..='\u{faff}' | '\u{ff00}'..='\u{ffef}')
}

/// Words whose dot does not end a sentence.
const ABBREVIATIONS: &[&str] =
    &["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "cf", "fig", "approx", "dept"];

/// Whether the word before a dot at `chars[..i]` is an abbreviation or an initial.
fn abbreviation(chars: &[(usize, char)]) -> bool {
    let word: String = chars
        .iter()
        .rev()
        .map(|&(_, c)| c)
        .take_while(|c| !c.is_whitespace() && !matches!(c, '(' | '"' | '\'' | '“' | '‘' | '['))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let lower = word.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return true;
    }
    let mut letters = word.chars();
    if let (Some(c), None) = (letters.next(), letters.next()) {
        return c.is_uppercase();
    }
    // Dotted initialisms: U.S, a.m
    word.contains('.') && word.split('.').all(|part| part.chars().count() == 1)
}

/// Finds the first sentence end at or after byte `from`.
fn find_end(buf: &str, from: usize, eof: bool) -> Scan {
    let chars: Vec<(usize, char)> = buf.char_indices().collect();
    let n = chars.len();
    let byte = |k: usize| if k < n { chars[k].0 } else { buf.len() };
    let mut i = chars.partition_point(|&(at, _)| at < from);
    // The end of the buffer: final at EOF, otherwise wait for more text.
    let undecided = |i: usize| if eof { Scan::Cut(buf.len()) } else { Scan::Wait(byte(i)) };
    // The index just past a run of terminators and closing quotes starting at `i`.
    let run_end = |i: usize| {
        let mut j = i + 1;
        while j < n && (is_terminator(chars[j].1) || is_closer(chars[j].1)) {
            j += 1;
        }
        j
    };
    while i < n {
        let c = chars[i].1;
        match c {
            '\n' | '\r' => return Scan::Cut(byte(i + 1)),
            '。' | '！' | '？' | '；' => {
                let j = run_end(i);
                return if j == n && !eof { Scan::Wait(byte(i)) } else { Scan::Cut(byte(j)) };
            }
            '!' | '?' | ';' => {
                let j = run_end(i);
                if j == n {
                    return undecided(i);
                }
                let next = chars[j].1;
                if next.is_whitespace() || is_cjk(next) {
                    return Scan::Cut(byte(j));
                }
                i = j;
                continue;
            }
            '.' | '…' => {
                let prev = i.checked_sub(1).map(|k| chars[k].1);
                if c == '.' && prev.is_some_and(|p| p.is_ascii_digit()) {
                    if i + 1 == n {
                        return undecided(i);
                    }
                    if chars[i + 1].1.is_ascii_digit() {
                        i += 1;
                        continue;
                    }
                }
                let j = run_end(i);
                if j == n {
                    return undecided(i);
                }
                let next = chars[j].1;
                if is_cjk(next) {
                    return Scan::Cut(byte(j));
                }
                if !next.is_whitespace() {
                    i = j;
                    continue;
                }
                // What follows the space decides: a newline or a capital ends the sentence.
                let mut k = j;
                let mut newline = false;
                while k < n && chars[k].1.is_whitespace() {
                    newline |= matches!(chars[k].1, '\n' | '\r');
                    k += 1;
                }
                if newline {
                    return Scan::Cut(byte(j));
                }
                if k == n {
                    return undecided(i);
                }
                let single_dot = c == '.' && !is_terminator(chars[i + 1].1);
                if chars[k].1.is_lowercase() || (single_dot && abbreviation(&chars[..i])) {
                    i = j;
                    continue;
                }
                return Scan::Cut(byte(j));
            }
            _ => {}
        }
        i += 1;
    }
    Scan::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `text` fed whole, by characters and in 3-byte-ish tokens; all must agree.
    fn split(text: &str) -> Vec<String> {
        let whole = {
            let mut s = SentenceSplitter::new();
            let mut out = s.push(text);
            out.extend(s.finish());
            out
        };
        let by_char = {
            let mut s = SentenceSplitter::new();
            let mut out = Vec::new();
            let mut buf = [0u8; 4];
            for c in text.chars() {
                out.extend(s.push(c.encode_utf8(&mut buf)));
            }
            out.extend(s.finish());
            out
        };
        let by_three = {
            let mut s = SentenceSplitter::new();
            let mut out = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            for chunk in chars.chunks(3) {
                out.extend(s.push(&chunk.iter().collect::<String>()));
            }
            out.extend(s.finish());
            out
        };
        assert_eq!(whole, by_char, "whole vs by character for {text:?}");
        assert_eq!(whole, by_three, "whole vs by three characters for {text:?}");
        whole
    }

    #[test]
    fn english_sentences() {
        assert_eq!(
            split("Hello there. How are you? I'm fine! Thanks"),
            ["Hello there.", "How are you?", "I'm fine!", "Thanks"]
        );
    }

    #[test]
    fn sentences_come_out_as_soon_as_they_are_decided() {
        let mut s = SentenceSplitter::new();
        assert!(s.push("It is 3").is_empty());
        assert!(s.push(".").is_empty(), "3. may become 3.14");
        assert!(s.push("14 today.").is_empty(), "the dot may be an abbreviation");
        assert_eq!(s.push(" And"), ["It is 3.14 today."]);
        assert!(s.push(" then?").is_empty(), "a closing quote may follow");
        assert_eq!(s.push(" "), ["And then?"]);
        assert!(s.push("Yes").is_empty());
        assert_eq!(s.finish().as_deref(), Some("Yes"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn decimals_abbreviations_and_dotted_words() {
        assert_eq!(
            split(
                "Pi is about 3.14159. Fruit, e.g. apples, is good. Ask Mr. Smith or J. Doe at example.com today."
            ),
            [
                "Pi is about 3.14159.",
                "Fruit, e.g. apples, is good.",
                "Ask Mr. Smith or J. Doe at example.com today."
            ]
        );
        assert_eq!(split("It costs $5. Cheap."), ["It costs $5.", "Cheap."]);
        assert_eq!(split("The U.S. economy grew."), ["The U.S. economy grew."]);
    }

    #[test]
    fn ellipses() {
        assert_eq!(split("Well... maybe. Wait... What?"), ["Well... maybe.", "Wait...", "What?"]);
        assert_eq!(split("Hmm… Okay."), ["Hmm…", "Okay."]);
    }

    #[test]
    fn chinese_without_spaces() {
        assert_eq!(
            split("你好！今天天气很好。我们去公园吧？好的；走吧"),
            ["你好！", "今天天气很好。", "我们去公园吧？", "好的；", "走吧"]
        );
        assert_eq!(split("他说：“我来了。”然后走了。"), ["他说：“我来了。”", "然后走了。"]);
        assert_eq!(split("价格是3.5元。"), ["价格是3.5元。"]);
    }

    #[test]
    fn quotes_and_brackets_stay_with_their_sentence() {
        assert_eq!(
            split(r#"He said "Stop!" Then he left. (Really.) Yes."#),
            [r#"He said "Stop!""#, "Then he left.", "(Really.)", "Yes."]
        );
    }

    #[test]
    fn newlines_and_semicolons() {
        assert_eq!(
            split("First line\nSecond line; third part\n\nFourth"),
            ["First line", "Second line;", "third part", "Fourth"]
        );
        assert_eq!(split("a;b is code"), ["a;b is code"]);
    }

    #[test]
    fn short_fragments_join_the_next_sentence() {
        assert_eq!(split("1. First item.\n2. Second item."), ["1. First item.", "2. Second item."]);
        assert_eq!(split("嗯。好的。"), ["嗯。好的。"]);
        assert_eq!(split("Oh! I see."), ["Oh!", "I see."]);
        assert_eq!(split("A! B! Done."), ["A! B!", "Done."]);
        assert_eq!(split("!!! Wow."), ["!!! Wow."]);
        assert_eq!(split("Hi.\n\n"), ["Hi."]);
        assert_eq!(split(" \n "), Vec::<String>::new());
    }

    #[test]
    fn soft_limit_cuts_run_on_sentences_at_commas() {
        let mut s = SentenceSplitter::with_soft_limit(10);
        assert!(s.push("我们今天").is_empty());
        assert_eq!(s.push("去公园，然后去吃饭，"), ["我们今天去公园，然后去吃饭，"]);
        assert_eq!(s.push("最后回家。好"), ["最后回家。"]);
        assert_eq!(s.finish().as_deref(), Some("好"));
    }
}
