//! The parser (EXPRESSIONS.md §3): precedence climbing over the token stream.
//!
//! Recursion happens only where the grammar nests (parentheses, index brackets, call
//! arguments, `if` parts); operator chains, `**` chains and prefix runs are built in loops.
//! Both that nesting and the depth of the resulting tree are capped, so hostile input yields
//! a `ParseError` rather than a stack overflow, here or later when the tree is evaluated,
//! printed or dropped.

use std::time::Duration;

use super::ast::{Ast, BinaryOp, Call, Literal, Path, UnaryOp};
use super::lexer::{describe, tokenize, Keyword, Symbol, Tok, Token};
use super::ParseError;
use crate::value::Value;

/// Maximum depth of a parsed tree (a leaf has depth 1).
pub const MAX_DEPTH: u32 = 256;

/// Maximum nesting of parenthesized/delimited sub-expressions. Not below `MAX_DEPTH`, so the
/// printed form of any accepted tree (which nests at most once per tree level) parses again.
const MAX_NESTING: u32 = MAX_DEPTH;

pub(crate) fn parse(text: &str) -> Result<Ast, ParseError> {
    let fail = |position: usize, message: String| ParseError {
        text: text.to_string(),
        position,
        message,
    };
    let tokens = tokenize(text).map_err(|(pos, msg)| fail(pos, msg))?;
    let mut parser = Parser {
        tokens,
        next: 0,
        nesting: 0,
    };
    let result = parser.parse_expr().and_then(|node| {
        if parser.peek() == &Tok::Eof {
            Ok(node.ast)
        } else {
            Err(parser.unexpected("after the expression"))
        }
    });
    result.map_err(|(pos, msg)| fail(pos, msg))
}

type PResult<T> = Result<T, (usize, String)>;

/// A subtree with its depth.
struct Node {
    ast: Ast,
    depth: u32,
}

struct Parser {
    tokens: Vec<Token>,
    next: usize,
    nesting: u32,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.next].tok
    }

    fn peek_at(&self, offset: usize) -> &Tok {
        let i = (self.next + offset).min(self.tokens.len() - 1);
        &self.tokens[i].tok
    }

    fn pos(&self) -> usize {
        self.tokens[self.next].pos
    }

    /// Consumes the current token and returns its position.
    fn advance(&mut self) -> usize {
        let pos = self.pos();
        if self.next + 1 < self.tokens.len() {
            self.next += 1;
        }
        pos
    }

    fn unexpected(&self, context: &str) -> (usize, String) {
        (
            self.pos(),
            format!("Unexpected {} {context}", describe(self.peek())),
        )
    }

    fn expect(&mut self, tok: Tok, what: &str) -> PResult<()> {
        if *self.peek() == tok {
            self.advance();
            Ok(())
        } else {
            Err((
                self.pos(),
                format!("Expected {what}, found {}", describe(self.peek())),
            ))
        }
    }

    /// Wraps a new node, rejecting trees deeper than `MAX_DEPTH`.
    fn node(&self, ast: Ast, depth: u32, pos: usize) -> PResult<Node> {
        if depth > MAX_DEPTH {
            return Err((
                pos,
                format!("Expression nested too deeply (more than {MAX_DEPTH} levels)"),
            ));
        }
        Ok(Node { ast, depth })
    }

    /// A full expression, as found at top level and inside any delimiter.
    fn parse_expr(&mut self) -> PResult<Node> {
        if self.nesting >= MAX_NESTING {
            return Err((
                self.pos(),
                format!("Expression nested too deeply (more than {MAX_NESTING} levels)"),
            ));
        }
        self.nesting += 1;
        let result = self.parse_binary(1);
        self.nesting -= 1;
        result
    }

    /// Left-associative levels 1–5 by precedence climbing. The recursion for a right operand
    /// only goes to a tighter level, so its depth is bounded by the number of levels.
    fn parse_binary(&mut self, min_prec: u8) -> PResult<Node> {
        let mut left = self.parse_power()?;
        while let Some(op) = self.peek_binary() {
            if op.precedence() < min_prec {
                break;
            }
            let pos = self.advance();
            let right = self.parse_binary(op.precedence() + 1)?;
            let depth = left.depth.max(right.depth) + 1;
            left = self.node(
                Ast::Binary(op, Box::new(left.ast), Box::new(right.ast)),
                depth,
                pos,
            )?;
        }
        Ok(left)
    }

    /// Level 6: `a ** b ** c` is `a ** (b ** c)`.
    fn parse_power(&mut self) -> PResult<Node> {
        let first = self.parse_prefixed()?;
        if *self.peek() != Tok::Symbol(Symbol::Pow) {
            return Ok(first);
        }
        let mut operands = vec![first];
        let mut positions = Vec::new();
        while *self.peek() == Tok::Symbol(Symbol::Pow) {
            positions.push(self.advance());
            operands.push(self.parse_prefixed()?);
        }
        let mut acc = operands.pop().expect("at least two operands");
        while let (Some(left), Some(pos)) = (operands.pop(), positions.pop()) {
            let depth = left.depth.max(acc.depth) + 1;
            acc = self.node(
                Ast::Binary(BinaryOp::Pow, Box::new(left.ast), Box::new(acc.ast)),
                depth,
                pos,
            )?;
        }
        Ok(acc)
    }

    /// Level 7: prefix `not`, `!`, `-` bind tighter than any binary operator.
    fn parse_prefixed(&mut self) -> PResult<Node> {
        let mut ops = Vec::new();
        loop {
            let op = match self.peek() {
                Tok::Keyword(Keyword::Not) | Tok::Symbol(Symbol::Bang) => UnaryOp::Not,
                Tok::Symbol(Symbol::Minus) => UnaryOp::Neg,
                _ => break,
            };
            ops.push((op, self.advance()));
        }
        let mut node = self.parse_postfix()?;
        while let Some((op, pos)) = ops.pop() {
            let depth = node.depth + 1;
            node = self.node(Ast::Unary(op, Box::new(node.ast)), depth, pos)?;
        }
        Ok(node)
    }

    /// Level 8: `atom[i][j]`.
    fn parse_postfix(&mut self) -> PResult<Node> {
        let mut node = self.parse_atom()?;
        while *self.peek() == Tok::Symbol(Symbol::LBracket) {
            let pos = self.advance();
            let index = self.parse_expr()?;
            self.expect(Tok::Symbol(Symbol::RBracket), "']'")?;
            let depth = node.depth.max(index.depth) + 1;
            node = self.node(
                Ast::Index(Box::new(node.ast), Box::new(index.ast)),
                depth,
                pos,
            )?;
        }
        Ok(node)
    }

    fn parse_atom(&mut self) -> PResult<Node> {
        let pos = self.pos();
        let literal = match self.peek() {
            Tok::Keyword(Keyword::If) => return self.parse_if(),
            Tok::Keyword(Keyword::True) => Value::Bool(true),
            Tok::Keyword(Keyword::False) => Value::Bool(false),
            Tok::Keyword(Keyword::Null) => Value::Null,
            Tok::Duration(secs) => Value::Duration(Duration::from_secs(*secs)),
            Tok::Float(f) => Value::Float(*f),
            Tok::Int(i) => Value::Int(*i),
            Tok::Str(s) => Value::str(s.as_str()),
            Tok::Name(segments) => {
                if segments.len() == 1 && *self.peek_at(1) == Tok::Symbol(Symbol::LParen) {
                    let name = segments[0].to_string();
                    return self.parse_call(name);
                }
                let path = Path::new(segments).ok_or_else(|| (pos, "Invalid path".to_string()))?;
                self.advance();
                return Ok(Node {
                    ast: Ast::Path(path),
                    depth: 1,
                });
            }
            Tok::Qualified(name) => {
                if *self.peek_at(1) != Tok::Symbol(Symbol::LParen) {
                    return Err((pos, format!("Expected '(' after function name '{name}'")));
                }
                let name = name.clone();
                return self.parse_call(name);
            }
            Tok::Symbol(Symbol::LParen) => {
                self.advance();
                let inner = self.parse_expr()?;
                self.expect(Tok::Symbol(Symbol::RParen), "')'")?;
                return Ok(inner);
            }
            _ => return Err(self.unexpected("where an expression was expected")),
        };
        self.advance();
        let literal = Literal::new(literal).ok_or_else(|| (pos, "Invalid literal".to_string()))?;
        Ok(Node {
            ast: Ast::Literal(literal),
            depth: 1,
        })
    }

    /// `if C then A else B`; `B` extends as far right as possible.
    fn parse_if(&mut self) -> PResult<Node> {
        let pos = self.advance();
        let cond = self.parse_expr()?;
        self.expect(Tok::Keyword(Keyword::Then), "'then'")?;
        let then = self.parse_expr()?;
        self.expect(Tok::Keyword(Keyword::Else), "'else'")?;
        let otherwise = self.parse_expr()?;
        let depth = cond.depth.max(then.depth).max(otherwise.depth) + 1;
        self.node(
            Ast::If(
                Box::new(cond.ast),
                Box::new(then.ast),
                Box::new(otherwise.ast),
            ),
            depth,
            pos,
        )
    }

    /// `name(args)`, the current token being the name and the next one `(`. A trailing comma
    /// is allowed.
    fn parse_call(&mut self, name: String) -> PResult<Node> {
        let pos = self.advance();
        self.advance(); // `(`
        let mut args = Vec::new();
        let mut depth = 0;
        while *self.peek() != Tok::Symbol(Symbol::RParen) {
            let arg = self.parse_expr()?;
            depth = depth.max(arg.depth);
            args.push(arg.ast);
            match self.peek() {
                Tok::Symbol(Symbol::Comma) => {
                    self.advance();
                }
                Tok::Symbol(Symbol::RParen) => {}
                _ => {
                    return Err((
                        self.pos(),
                        format!(
                            "Expected ',' or ')' in the arguments of '{name}', found {}",
                            describe(self.peek())
                        ),
                    ))
                }
            }
        }
        self.advance(); // `)`
        let call = Call::new(&name, args)
            .ok_or_else(|| (pos, format!("Invalid function name '{name}'")))?;
        self.node(Ast::Call(Box::new(call)), depth + 1, pos)
    }

    fn peek_binary(&self) -> Option<BinaryOp> {
        Some(match self.peek() {
            Tok::Keyword(Keyword::Or) | Tok::Symbol(Symbol::OrOr) => BinaryOp::Or,
            Tok::Keyword(Keyword::And) | Tok::Symbol(Symbol::AndAnd) => BinaryOp::And,
            Tok::Symbol(Symbol::EqEq) => BinaryOp::Eq,
            Tok::Symbol(Symbol::Ne) => BinaryOp::Ne,
            Tok::Symbol(Symbol::Lt) => BinaryOp::Lt,
            Tok::Symbol(Symbol::Le) => BinaryOp::Le,
            Tok::Symbol(Symbol::Gt) => BinaryOp::Gt,
            Tok::Symbol(Symbol::Ge) => BinaryOp::Ge,
            Tok::Symbol(Symbol::Plus) => BinaryOp::Add,
            Tok::Symbol(Symbol::Minus) => BinaryOp::Sub,
            Tok::Symbol(Symbol::Star) => BinaryOp::Mul,
            Tok::Symbol(Symbol::Slash) => BinaryOp::Div,
            // `**` is consumed by `parse_power` and never reaches the climbing loop.
            _ => return None,
        })
    }
}
