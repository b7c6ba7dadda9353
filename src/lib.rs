//! pgtenant: a PostgreSQL transaction pooler for multi-tenant SaaS.
pub mod cluster;
