//! Authentication: who a client is and which tenant it acts for.
//!
//! `token` verifies the tenant token (a JWT, normally sent as the password) and mints tokens for
//! local use. This module must never let an unverified claim reach a session, and never log or
//! echo a token.

pub mod token;

pub use token::{MintError, MintKey, TokenError, TokenVerifier, VerifiedToken, mint, mint_claims};
