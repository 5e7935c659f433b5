//! The parser (EXPRESSIONS.md §3): operator precedence parsing with explicit stacks.
//!
//! Nothing here recurses: every open delimiter (parenthesis, index bracket, argument list,
//! `if` part) pushes a frame with its own operand and operator stacks. Hostile nesting
//! therefore cannot overflow the stack while parsing, and the depth of the resulting tree is
//! capped at [`MAX_DEPTH`] so that evaluating, printing, comparing or dropping it (which do
//! recurse) stays shallow too.

use std::time::Duration;

use super::ast::{Ast, BinaryOp, Call, Literal, Path, UnaryOp};
use super::lexer::{describe, tokenize, Keyword, Symbol, Tok, Token};
use super::ParseError;
use crate::value::Value;

/// Maximum depth of a parsed tree (a leaf has depth 1).
pub const MAX_DEPTH: u32 = 256;

/// Binding strength of the prefix operators: tighter than every binary operator.
const PREFIX_PRECEDENCE: u8 = 7;

pub(crate) fn parse(text: &str) -> Result<Ast, ParseError> {
    let fail = |(position, message): (usize, String)| ParseError {
        text: text.to_string(),
        position,
        message,
    };
    let tokens = tokenize(text).map_err(fail)?;
    Parser { tokens, next: 0 }.run().map_err(fail)
}

type PResult<T> = Result<T, (usize, String)>;

/// A subtree with its depth.
struct Node {
    ast: Ast,
    depth: u32,
}

fn checked(ast: Ast, depth: u32, pos: usize) -> PResult<Node> {
    if depth > MAX_DEPTH {
        return Err((
            pos,
            format!("Expression nested too deeply (more than {MAX_DEPTH} levels)"),
        ));
    }
    Ok(Node { ast, depth })
}

/// What ends the expression of a frame, and what the frame builds from it.
enum Closer {
    /// the whole input
    End,
    /// `( … )`
    Paren,
    /// `base[ … ]`
    Index { base: Node, pos: usize },
    /// `name( … , … )`
    Args {
        name: String,
        pos: usize,
        args: Vec<Ast>,
        depth: u32,
    },
    /// `if … then`
    IfCond { pos: usize },
    /// `then … else`
    IfThen { pos: usize, cond: Node },
    /// `else …`: ends at the first token that cannot continue an expression.
    IfElse { pos: usize, cond: Node, then: Node },
}

enum Pending {
    Prefix(UnaryOp),
    Binary(BinaryOp),
}

struct Frame {
    closer: Closer,
    stacks: Stacks,
}

impl Frame {
    fn new(closer: Closer) -> Frame {
        Frame {
            closer,
            stacks: Stacks {
                operands: Vec::new(),
                operators: Vec::new(),
            },
        }
    }
}

/// The operands and pending operators of one frame.
struct Stacks {
    operands: Vec<Node>,
    operators: Vec<(Pending, usize)>,
}

impl Stacks {
    /// Applies the operator on top of the stack to its operands.
    fn reduce_one(&mut self) -> PResult<()> {
        let Some((op, pos)) = self.operators.pop() else {
            return Ok(());
        };
        let missing = || (pos, "Missing operand".to_string());
        let node = match op {
            Pending::Prefix(op) => {
                let x = self.operands.pop().ok_or_else(missing)?;
                checked(Ast::Unary(op, Box::new(x.ast)), x.depth + 1, pos)?
            }
            Pending::Binary(op) => {
                let b = self.operands.pop().ok_or_else(missing)?;
                let a = self.operands.pop().ok_or_else(missing)?;
                let depth = a.depth.max(b.depth) + 1;
                checked(
                    Ast::Binary(op, Box::new(a.ast), Box::new(b.ast)),
                    depth,
                    pos,
                )?
            }
        };
        self.operands.push(node);
        Ok(())
    }

    /// Reduces everything: the frame's complete expression.
    fn finish(&mut self, pos: usize) -> PResult<Node> {
        while !self.operators.is_empty() {
            self.reduce_one()?;
        }
        match (self.operands.pop(), self.operands.is_empty()) {
            (Some(node), true) => Ok(node),
            _ => Err((pos, "Malformed expression".to_string())),
        }
    }

    /// Pushes a binary operator after reducing every pending operator that binds at least as
    /// tightly (strictly tighter for the right-associative `**`).
    fn push_binary(&mut self, op: BinaryOp, pos: usize) -> PResult<()> {
        let prec = op.precedence();
        let right_assoc = op == BinaryOp::Pow;
        while let Some((top, _)) = self.operators.last() {
            let top_prec = match top {
                Pending::Prefix(_) => PREFIX_PRECEDENCE,
                Pending::Binary(b) => b.precedence(),
            };
            if top_prec > prec || (top_prec == prec && !right_assoc) {
                self.reduce_one()?;
            } else {
                break;
            }
        }
        self.operators.push((Pending::Binary(op), pos));
        Ok(())
    }
}

struct Parser {
    tokens: Vec<Token>,
    next: usize,
}

/// Where the parser is within the current frame.
#[derive(PartialEq)]
enum Expect {
    /// prefix operators or an atom
    Operand,
    /// a binary operator, `[`, or the token that closes the frame
    Operator,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.next].tok
    }

    fn peek_second(&self) -> &Tok {
        let i = (self.next + 1).min(self.tokens.len() - 1);
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

    fn found(&self) -> String {
        describe(self.peek())
    }

    fn run(mut self) -> PResult<Ast> {
        let mut frames = vec![Frame::new(Closer::End)];
        let mut expect = Expect::Operand;
        loop {
            let frame = &mut frames
                .last_mut()
                .expect("the End frame is never popped")
                .stacks;
            if expect == Expect::Operand {
                if let Some(op) = prefix_operator(self.peek()) {
                    let pos = self.advance();
                    frame.operators.push((Pending::Prefix(op), pos));
                    continue;
                }
                match self.operand()? {
                    Start::Node(node) => {
                        frame.operands.push(node);
                        expect = Expect::Operator;
                    }
                    Start::Frame(closer) => frames.push(Frame::new(closer)),
                    Start::EmptyCall(name, pos) => {
                        let call = make_call(name, Vec::new(), pos)?;
                        frame.operands.push(checked(call, 1, pos)?);
                        expect = Expect::Operator;
                    }
                }
                continue;
            }
            if let Some(op) = binary_operator(self.peek()) {
                let pos = self.advance();
                frame.push_binary(op, pos)?;
                expect = Expect::Operand;
                continue;
            }
            if *self.peek() == Tok::Symbol(Symbol::LBracket) {
                let pos = self.advance();
                let base = frame
                    .operands
                    .pop()
                    .ok_or((pos, "Missing operand".to_string()))?;
                frames.push(Frame::new(Closer::Index { base, pos }));
                expect = Expect::Operand;
                continue;
            }
            // Anything else must close the current frame.
            let Frame {
                closer,
                stacks: mut frame,
            } = frames.pop().expect("a frame is open");
            let here = self.pos();
            let node = match closer {
                Closer::End => {
                    if *self.peek() != Tok::Eof {
                        return Err((
                            here,
                            format!("Unexpected {} after the expression", self.found()),
                        ));
                    }
                    return Ok(frame.finish(here)?.ast);
                }
                Closer::Paren => {
                    self.expect_symbol(Symbol::RParen, "')'")?;
                    frame.finish(here)?
                }
                Closer::Index { base, pos } => {
                    self.expect_symbol(Symbol::RBracket, "']'")?;
                    let index = frame.finish(here)?;
                    let depth = base.depth.max(index.depth) + 1;
                    checked(
                        Ast::Index(Box::new(base.ast), Box::new(index.ast)),
                        depth,
                        pos,
                    )?
                }
                Closer::Args {
                    name,
                    pos,
                    mut args,
                    depth,
                } => {
                    let comma = match self.peek() {
                        Tok::Symbol(Symbol::Comma) => true,
                        Tok::Symbol(Symbol::RParen) => false,
                        _ => {
                            return Err((
                                here,
                                format!(
                                    "Expected ',' or ')' in the arguments of '{name}', found {}",
                                    self.found()
                                ),
                            ))
                        }
                    };
                    self.advance();
                    let arg = frame.finish(here)?;
                    let depth = depth.max(arg.depth);
                    args.push(arg.ast);
                    let trailing = comma && *self.peek() == Tok::Symbol(Symbol::RParen);
                    if comma && !trailing {
                        frames.push(Frame::new(Closer::Args {
                            name,
                            pos,
                            args,
                            depth,
                        }));
                        expect = Expect::Operand;
                        continue;
                    }
                    if trailing {
                        self.advance();
                    }
                    checked(make_call(name, args, pos)?, depth + 1, pos)?
                }
                Closer::IfCond { pos } => {
                    self.expect_keyword(Keyword::Then, "'then'")?;
                    let cond = frame.finish(here)?;
                    frames.push(Frame::new(Closer::IfThen { pos, cond }));
                    expect = Expect::Operand;
                    continue;
                }
                Closer::IfThen { pos, cond } => {
                    self.expect_keyword(Keyword::Else, "'else'")?;
                    let then = frame.finish(here)?;
                    frames.push(Frame::new(Closer::IfElse { pos, cond, then }));
                    expect = Expect::Operand;
                    continue;
                }
                Closer::IfElse { pos, cond, then } => {
                    // The closing token belongs to an enclosing frame: not consumed.
                    let otherwise = frame.finish(here)?;
                    let depth = cond.depth.max(then.depth).max(otherwise.depth) + 1;
                    let ast = Ast::If(
                        Box::new(cond.ast),
                        Box::new(then.ast),
                        Box::new(otherwise.ast),
                    );
                    checked(ast, depth, pos)?
                }
            };
            frames
                .last_mut()
                .expect("the End frame is never popped")
                .stacks
                .operands
                .push(node);
            expect = Expect::Operator;
        }
    }

    fn expect_symbol(&mut self, symbol: Symbol, what: &str) -> PResult<()> {
        if *self.peek() == Tok::Symbol(symbol) {
            self.advance();
            Ok(())
        } else {
            Err((
                self.pos(),
                format!("Expected {what}, found {}", self.found()),
            ))
        }
    }

    fn expect_keyword(&mut self, keyword: Keyword, what: &str) -> PResult<()> {
        if *self.peek() == Tok::Keyword(keyword) {
            self.advance();
            Ok(())
        } else {
            Err((
                self.pos(),
                format!("Expected {what}, found {}", self.found()),
            ))
        }
    }

    /// An atom, or the opening of a delimited construct.
    fn operand(&mut self) -> PResult<Start> {
        let pos = self.pos();
        let value = match self.peek() {
            Tok::Keyword(Keyword::If) => {
                self.advance();
                return Ok(Start::Frame(Closer::IfCond { pos }));
            }
            Tok::Symbol(Symbol::LParen) => {
                self.advance();
                return Ok(Start::Frame(Closer::Paren));
            }
            Tok::Name(segments)
                if segments.len() == 1 && *self.peek_second() == Tok::Symbol(Symbol::LParen) =>
            {
                let name = segments[0].to_string();
                return Ok(self.call_start(name));
            }
            Tok::Qualified(name) => {
                if *self.peek_second() != Tok::Symbol(Symbol::LParen) {
                    return Err((pos, format!("Expected '(' after function name '{name}'")));
                }
                let name = name.clone();
                return Ok(self.call_start(name));
            }
            Tok::Name(segments) => {
                let path = Path::new(segments).ok_or((pos, "Invalid path".to_string()))?;
                self.advance();
                return Ok(Start::Node(checked(Ast::Path(path), 1, pos)?));
            }
            Tok::Keyword(Keyword::True) => Value::Bool(true),
            Tok::Keyword(Keyword::False) => Value::Bool(false),
            Tok::Keyword(Keyword::Null) => Value::Null,
            Tok::Duration(secs) => Value::Duration(Duration::from_secs(*secs)),
            Tok::Float(f) => Value::Float(*f),
            Tok::Int(i) => Value::Int(*i),
            Tok::Str(s) => Value::str(s.as_str()),
            _ => {
                return Err((
                    pos,
                    format!(
                        "Unexpected {} where an expression was expected",
                        self.found()
                    ),
                ))
            }
        };
        self.advance();
        let literal = Literal::new(value).ok_or((pos, "Invalid literal".to_string()))?;
        Ok(Start::Node(checked(Ast::Literal(literal), 1, pos)?))
    }

    /// Consumes `name (` and opens the argument list (or closes it at once on `)`).
    fn call_start(&mut self, name: String) -> Start {
        let pos = self.advance();
        self.advance();
        if *self.peek() == Tok::Symbol(Symbol::RParen) {
            self.advance();
            return Start::EmptyCall(name, pos);
        }
        Start::Frame(Closer::Args {
            name,
            pos,
            args: Vec::new(),
            depth: 0,
        })
    }
}

enum Start {
    Node(Node),
    Frame(Closer),
    EmptyCall(String, usize),
}

fn make_call(name: String, args: Vec<Ast>, pos: usize) -> PResult<Ast> {
    let call = Call::new(&name, args).ok_or((pos, format!("Invalid function name '{name}'")))?;
    Ok(Ast::Call(Box::new(call)))
}

fn prefix_operator(tok: &Tok) -> Option<UnaryOp> {
    match tok {
        Tok::Keyword(Keyword::Not) | Tok::Symbol(Symbol::Bang) => Some(UnaryOp::Not),
        Tok::Symbol(Symbol::Minus) => Some(UnaryOp::Neg),
        _ => None,
    }
}

fn binary_operator(tok: &Tok) -> Option<BinaryOp> {
    Some(match tok {
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
        Tok::Symbol(Symbol::Pow) => BinaryOp::Pow,
        _ => return None,
    })
}
