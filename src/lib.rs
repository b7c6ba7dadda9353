//! pgtenant: a PostgreSQL transaction pooler that runs every transaction in its client's tenant (RLS) scope.

pub mod auth;
pub mod config;
pub mod tenant;
