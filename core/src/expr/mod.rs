//! The expression language (EXPRESSIONS.md). Under construction.
