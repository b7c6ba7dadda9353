//! pgtenant: a PostgreSQL transaction pooler for multi-tenant SaaS.
//!
//! - [`sql`]: splits Query text into statements and finds where transactions begin and end.
pub mod sql;

pub fn placeholder() {}
