//! Tokens of the expression language (EXPRESSIONS.md §2). Whitespace separates tokens and
//! never appears inside one: a field path (`event.plan`) and a qualified function name
//! (`str::trim`) are single tokens, so `event . plan` and `str :: trim` do not lex.
//! Positions are character offsets, as reported in `ParseError`.

use super::ast::is_keyword;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    And,
    Or,
    Not,
    If,
    Then,
    Else,
    True,
    False,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Symbol {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Pow,
    Star,
    Slash,
    Plus,
    Minus,
    Ge,
    Le,
    Ne,
    EqEq,
    Gt,
    Lt,
    AndAnd,
    OrOr,
    Bang,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Int(i64),
    Float(f64),
    /// whole seconds
    Duration(u64),
    Str(String),
    /// An identifier followed directly by `.segment`s. The first segment is never a keyword.
    Name(Vec<Box<str>>),
    /// `ns::name`
    Qualified(String),
    Keyword(Keyword),
    Symbol(Symbol),
    Eof,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    /// character offset of the token's first character
    pub pos: usize,
}

/// A lexical error: character offset and message.
pub(crate) type LexError = (usize, String);

pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, LexError> {
    let chars: Vec<char> = text.chars().collect();
    let mut lexer = Lexer { chars, i: 0 };
    let mut tokens = Vec::new();
    loop {
        while lexer.peek().is_some_and(char::is_whitespace) {
            lexer.i += 1;
        }
        let pos = lexer.i;
        let Some(c) = lexer.peek() else {
            tokens.push(Token { tok: Tok::Eof, pos });
            return Ok(tokens);
        };
        let tok = if c.is_ascii_digit() {
            lexer.number()?
        } else if is_ident_start(c) {
            lexer.word()?
        } else if c == '"' || c == '\'' {
            lexer.string(c)?
        } else {
            Tok::Symbol(lexer.symbol()?)
        };
        tokens.push(Token { tok, pos });
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_continue(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn keyword(word: &str) -> Option<Keyword> {
    Some(match word {
        "and" => Keyword::And,
        "or" => Keyword::Or,
        "not" => Keyword::Not,
        "if" => Keyword::If,
        "then" => Keyword::Then,
        "else" => Keyword::Else,
        "true" => Keyword::True,
        "false" => Keyword::False,
        "null" => Keyword::Null,
        _ => return None,
    })
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.i + offset).copied()
    }

    fn take_while(&mut self, pred: impl Fn(char) -> bool) -> String {
        let start = self.i;
        while self.peek().is_some_and(&pred) {
            self.i += 1;
        }
        self.chars[start..self.i].iter().collect()
    }

    /// INT, FLOAT (`digits.digits`) or DURATION (`digits` + one of `d h m s`).
    fn number(&mut self) -> Result<Tok, LexError> {
        let start = self.i;
        let digits = self.take_while(|c| c.is_ascii_digit());
        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
            let fraction = self.take_while(|c| c.is_ascii_digit());
            // Digits on both sides always parse; a literal beyond f64 range becomes infinity.
            let value = format!("{digits}.{fraction}")
                .parse::<f64>()
                .unwrap_or(f64::INFINITY);
            return Ok(Tok::Float(value));
        }
        let unit = match self.peek() {
            Some('d') => Some(86_400u64),
            Some('h') => Some(3_600),
            Some('m') => Some(60),
            Some('s') => Some(1),
            _ => None,
        };
        if let Some(unit) = unit {
            self.i += 1;
            let secs = digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(unit))
                .ok_or_else(|| (start, "Duration literal out of range".to_string()))?;
            return Ok(Tok::Duration(secs));
        }
        digits
            .parse::<i64>()
            .map(Tok::Int)
            .map_err(|_| (start, format!("Integer literal {digits} out of range")))
    }

    /// A keyword, a field path or a qualified function name.
    fn word(&mut self) -> Result<Tok, LexError> {
        let first = self.take_while(is_ident_continue);
        if let Some(kw) = keyword(&first) {
            return Ok(Tok::Keyword(kw));
        }
        if self.peek() == Some(':')
            && self.peek_at(1) == Some(':')
            && self.peek_at(2).is_some_and(is_ident_start)
        {
            let name_pos = self.i + 2;
            self.i += 2;
            let name = self.take_while(is_ident_continue);
            if is_keyword(&name) {
                return Err((name_pos, format!("'{name}' is a reserved keyword")));
            }
            return Ok(Tok::Qualified(format!("{first}::{name}")));
        }
        let mut segments = vec![first.into_boxed_str()];
        while self.peek() == Some('.') && self.peek_at(1).is_some_and(is_ident_start) {
            self.i += 1;
            segments.push(self.take_while(is_ident_continue).into_boxed_str());
        }
        Ok(Tok::Name(segments))
    }

    fn string(&mut self, quote: char) -> Result<Tok, LexError> {
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err((start, "Unterminated string literal".to_string()));
            };
            self.i += 1;
            if c == quote {
                return Ok(Tok::Str(out));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let escaped = match self.peek() {
                Some('\\') => '\\',
                Some('"') => '"',
                Some('\'') => '\'',
                Some('n') => '\n',
                Some('r') => '\r',
                Some('t') => '\t',
                Some(other) => {
                    return Err((self.i - 1, format!("Invalid escape sequence '\\{other}'")));
                }
                None => return Err((start, "Unterminated string literal".to_string())),
            };
            self.i += 1;
            out.push(escaped);
        }
    }

    fn symbol(&mut self) -> Result<Symbol, LexError> {
        let c = self.peek().unwrap_or(' ');
        let next = self.peek_at(1);
        let (symbol, len) = match (c, next) {
            ('*', Some('*')) => (Symbol::Pow, 2),
            ('>', Some('=')) => (Symbol::Ge, 2),
            ('<', Some('=')) => (Symbol::Le, 2),
            ('!', Some('=')) => (Symbol::Ne, 2),
            ('=', Some('=')) => (Symbol::EqEq, 2),
            ('&', Some('&')) => (Symbol::AndAnd, 2),
            ('|', Some('|')) => (Symbol::OrOr, 2),
            ('(', _) => (Symbol::LParen, 1),
            (')', _) => (Symbol::RParen, 1),
            ('[', _) => (Symbol::LBracket, 1),
            (']', _) => (Symbol::RBracket, 1),
            (',', _) => (Symbol::Comma, 1),
            ('*', _) => (Symbol::Star, 1),
            ('/', _) => (Symbol::Slash, 1),
            ('+', _) => (Symbol::Plus, 1),
            ('-', _) => (Symbol::Minus, 1),
            ('>', _) => (Symbol::Gt, 1),
            ('<', _) => (Symbol::Lt, 1),
            ('!', _) => (Symbol::Bang, 1),
            _ => return Err((self.i, format!("Unexpected character '{c}'"))),
        };
        self.i += len;
        Ok(symbol)
    }
}

/// How a token is named in parse errors.
pub(crate) fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Int(i) => format!("number {i}"),
        Tok::Float(f) => format!("number {f}"),
        Tok::Duration(s) => format!("duration {s}s"),
        Tok::Str(_) => "a string".to_string(),
        Tok::Name(segments) => format!("'{}'", segments.join(".")),
        Tok::Qualified(name) => format!("'{name}'"),
        Tok::Keyword(kw) => format!("keyword '{}'", format!("{kw:?}").to_lowercase()),
        Tok::Symbol(s) => format!("'{}'", symbol_text(*s)),
        Tok::Eof => "end of expression".to_string(),
    }
}

fn symbol_text(s: Symbol) -> &'static str {
    match s {
        Symbol::LParen => "(",
        Symbol::RParen => ")",
        Symbol::LBracket => "[",
        Symbol::RBracket => "]",
        Symbol::Comma => ",",
        Symbol::Pow => "**",
        Symbol::Star => "*",
        Symbol::Slash => "/",
        Symbol::Plus => "+",
        Symbol::Minus => "-",
        Symbol::Ge => ">=",
        Symbol::Le => "<=",
        Symbol::Ne => "!=",
        Symbol::EqEq => "==",
        Symbol::Gt => ">",
        Symbol::Lt => "<",
        Symbol::AndAnd => "&&",
        Symbol::OrOr => "||",
        Symbol::Bang => "!",
    }
}
