//! Reads what the audit judges from PostgreSQL's catalogs into plain structs ([`Facts`]).
//!
//! This is the only part of the audit that talks to the database, and it only reads: every
//! statement is a `SELECT` on catalogs readable by any role (`pg_roles`, never `pg_authid`), so
//! the audit works whether it connects as the pool role or as an administrator. Privileges are
//! always asked *for the pool role* (`has_table_privilege(pool, …)`, `pg_has_role(pool, …)`),
//! never for whoever is connected. Names come back already quoted where SQL needs it
//! (`format('%I.%I')`, `quote_ident`), so the fixes printed from them can be pasted as they are.
//! It must never judge anything: deciding what is wrong belongs to [`super::checks`].

use tokio_postgres::Client;

use super::AuditError;

/// Schemas that belong to PostgreSQL itself; nothing in them is audited.
const SYSTEM_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// Everything the checks look at, for one database and one pool role.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// `current_database()`, quoted as an identifier where needed.
    pub database: String,
    /// `session_user` of the audit's own connection.
    pub connected_as: String,
    pub server_version: String,
    pub role: RoleFacts,
    /// Ordinary and partitioned tables outside the system schemas.
    pub tables: Vec<TableFacts>,
    pub indexes: Vec<IndexFacts>,
    pub policies: Vec<PolicyFacts>,
    /// Views and materialized views, with the relations their rules read.
    pub views: Vec<ViewFacts>,
    /// `SECURITY DEFINER` functions the pool role may execute.
    pub definer_functions: Vec<FunctionFacts>,
    pub activity: ActivityFacts,
    /// Large objects per owner: (owner, count).
    pub large_objects: Vec<(String, i64)>,
    pub lo_compat_privileges: bool,
}

/// The pool role and what it may do.
#[derive(Debug, Clone, Default)]
pub struct RoleFacts {
    /// As SQL needs it (`quote_ident`).
    pub ident: String,
    pub superuser: bool,
    pub bypassrls: bool,
    /// Other roles it is a member of (so may `SET ROLE` to) that are superuser or BYPASSRLS.
    pub privileged_memberships: Vec<PrivilegedRole>,
    /// `pg_read_all_stats` and `pg_monitor`, when the role has their privileges.
    pub stats_roles: Vec<String>,
    /// Those of `stats_roles` granted to the pool role itself (the ones `REVOKE … FROM pool`
    /// takes away).
    pub stats_roles_granted: Vec<String>,
    /// Schemas where it may create objects.
    pub create_schemas: Vec<SchemaAccess>,
    pub create_on_database: bool,
    pub temp_on_database: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PrivilegedRole {
    pub ident: String,
    pub superuser: bool,
    pub bypassrls: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SchemaAccess {
    pub ident: String,
    /// The pool role owns the schema (or a role whose privileges it has): revoking is not
    /// enough, the owner must change.
    pub owned_by_pool: bool,
}

#[derive(Debug, Clone, Default)]
pub struct TableFacts {
    pub oid: u32,
    /// `schema.table`, quoted where needed.
    pub name: String,
    /// The bare table name, for finding it in function bodies.
    pub relname: String,
    pub partitioned: bool,
    /// A partition of a partitioned table.
    pub partition: bool,
    pub rls_enabled: bool,
    pub rls_forced: bool,
    pub owner: String,
    /// The pool role has the owner's privileges (`pg_has_role(pool, owner, 'USAGE')`).
    pub owned_by_pool: bool,
    /// Which of SELECT, INSERT, UPDATE, DELETE the pool role holds.
    pub pool_privileges: Vec<String>,
    /// The tenant column, when the table has one.
    pub tenant_column: Option<ColumnFacts>,
}

#[derive(Debug, Clone, Default)]
pub struct ColumnFacts {
    pub attnum: i16,
    pub not_null: bool,
}

#[derive(Debug, Clone, Default)]
pub struct IndexFacts {
    pub table_oid: u32,
    pub name: String,
    pub definition: String,
    pub primary: bool,
    pub unique: bool,
    /// Column numbers, 0 for an expression.
    pub keys: Vec<i16>,
}

/// The command a policy is for (`polcmd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyCommand {
    #[default]
    All,
    Select,
    Insert,
    Update,
    Delete,
}

#[derive(Debug, Clone, Default)]
pub struct PolicyFacts {
    pub table_oid: u32,
    pub name: String,
    pub command: PolicyCommand,
    pub permissive: bool,
    /// Role names (`public` for PUBLIC).
    pub roles: Vec<String>,
    /// The pool role has the privileges of one of `roles` (or `roles` holds PUBLIC).
    pub applies_to_pool: bool,
    /// `USING`, deparsed.
    pub using: Option<String>,
    /// `WITH CHECK`, deparsed.
    pub with_check: Option<String>,
    /// Bodies of the functions the policy's expressions call (recorded in `pg_depend`).
    pub helper_sources: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ViewFacts {
    pub name: String,
    pub materialized: bool,
    /// `security_invoker` is set to a true value in `reloptions`.
    pub security_invoker: bool,
    pub owner: String,
    /// The pool role may SELECT, INSERT, UPDATE or DELETE through it.
    pub pool_can_use: bool,
    /// Relations its rewrite rule reads (tables and other views), by oid.
    pub references: Vec<u32>,
    pub oid: u32,
}

#[derive(Debug, Clone, Default)]
pub struct FunctionFacts {
    /// `schema.name(argument types)`, quoted where needed.
    pub signature: String,
    pub owner: String,
    pub source: String,
    /// Relations recorded in `pg_depend` (SQL functions with a `BEGIN ATOMIC` body).
    pub references: Vec<u32>,
}

/// Who can read the query text of other sessions of the pool role.
#[derive(Debug, Clone, Default)]
pub struct ActivityFacts {
    /// SELECT on `pg_catalog.pg_stat_activity`.
    pub view_selectable: bool,
    /// EXECUTE on `pg_stat_get_activity(integer)`.
    pub activity_function: bool,
    /// EXECUTE on `pg_stat_get_backend_activity(integer)`.
    pub backend_activity_function: bool,
    /// `track_activities` is off for the pool role's sessions (role/database setting, or the
    /// server default when no such setting exists).
    pub track_activities_off: bool,
    /// `pg_stat_statements` when the extension is installed in this database.
    pub statements: Option<StatementsFacts>,
}

#[derive(Debug, Clone, Default)]
pub struct StatementsFacts {
    /// `schema.pg_stat_statements`, quoted where needed.
    pub view: String,
    /// The pool role may SELECT from the view.
    pub view_selectable: bool,
    /// Signatures of the extension's `pg_stat_statements(…)` functions the pool role may
    /// execute (calling one reads the same rows as the view).
    pub functions: Vec<String>,
}

/// Reads every fact about `pool_role` and the tenant column `tenant_column`.
pub async fn collect(
    client: &Client,
    pool_role: &str,
    tenant_column: &str,
) -> Result<Facts, AuditError> {
    let header = query_one(
        client,
        "database",
        "SELECT quote_ident(current_database()), session_user::text, \
                current_setting('server_version'), \
                current_setting('lo_compat_privileges') = 'on'",
        &[],
    )
    .await?;
    let role_row = client
        .query_opt(
            "SELECT oid, quote_ident(rolname), rolsuper, rolbypassrls FROM pg_catalog.pg_roles \
             WHERE rolname = $1",
            &[&pool_role],
        )
        .await
        .map_err(|source| AuditError::Query {
            what: "pool role",
            source,
        })?
        .ok_or_else(|| AuditError::UnknownRole(pool_role.to_owned()))?;
    let role_oid: u32 = role_row.get(0);

    let mut facts = Facts {
        database: header.get(0),
        connected_as: header.get(1),
        server_version: header.get(2),
        lo_compat_privileges: header.get(3),
        role: RoleFacts {
            ident: role_row.get(1),
            superuser: role_row.get(2),
            bypassrls: role_row.get(3),
            ..RoleFacts::default()
        },
        ..Facts::default()
    };
    collect_role(client, role_oid, &mut facts.role).await?;
    facts.tables = collect_tables(client, role_oid, tenant_column).await?;
    facts.indexes = collect_indexes(client).await?;
    facts.policies = collect_policies(client, role_oid).await?;
    facts.views = collect_views(client, role_oid).await?;
    facts.definer_functions = collect_functions(client, role_oid).await?;
    facts.activity = collect_activity(client, role_oid).await?;
    facts.large_objects = client
        .query(
            "SELECT quote_ident(pg_catalog.pg_get_userbyid(lomowner)), count(*) \
             FROM pg_catalog.pg_largeobject_metadata GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .map_err(|source| AuditError::Query {
            what: "large objects",
            source,
        })?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(facts)
}

async fn query_one(
    client: &Client,
    what: &'static str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, AuditError> {
    client
        .query_one(sql, params)
        .await
        .map_err(|source| AuditError::Query { what, source })
}

async fn query(
    client: &Client,
    what: &'static str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, AuditError> {
    client
        .query(sql, params)
        .await
        .map_err(|source| AuditError::Query { what, source })
}

async fn collect_role(client: &Client, role: u32, facts: &mut RoleFacts) -> Result<(), AuditError> {
    facts.privileged_memberships = query(
        client,
        "role memberships",
        "SELECT quote_ident(r.rolname), r.rolsuper, r.rolbypassrls FROM pg_catalog.pg_roles r \
         WHERE r.oid <> $1::oid AND (r.rolsuper OR r.rolbypassrls) \
           AND pg_catalog.pg_has_role($1::oid, r.oid, 'MEMBER') ORDER BY 1",
        &[&role],
    )
    .await?
    .iter()
    .map(|row| PrivilegedRole {
        ident: row.get(0),
        superuser: row.get(1),
        bypassrls: row.get(2),
    })
    .collect();
    let stats = query(
        client,
        "statistics roles",
        "SELECT r.rolname::text, EXISTS (SELECT FROM pg_catalog.pg_auth_members m \
                                         WHERE m.roleid = r.oid AND m.member = $1::oid) \
         FROM pg_catalog.pg_roles r \
         WHERE r.rolname IN ('pg_read_all_stats', 'pg_monitor') \
           AND pg_catalog.pg_has_role($1::oid, r.oid, 'USAGE') ORDER BY 1",
        &[&role],
    )
    .await?;
    for row in stats {
        let name: String = row.get(0);
        if row.get(1) {
            facts.stats_roles_granted.push(name.clone());
        }
        facts.stats_roles.push(name);
    }
    facts.create_schemas = query(
        client,
        "schema privileges",
        &format!(
            "SELECT quote_ident(n.nspname), pg_catalog.pg_has_role($1::oid, n.nspowner, 'USAGE') \
             FROM pg_catalog.pg_namespace n \
             WHERE {SYSTEM_SCHEMAS} AND pg_catalog.has_schema_privilege($1::oid, n.oid, 'CREATE') \
             ORDER BY 1"
        ),
        &[&role],
    )
    .await?
    .iter()
    .map(|row| SchemaAccess {
        ident: row.get(0),
        owned_by_pool: row.get(1),
    })
    .collect();
    let db = query_one(
        client,
        "database privileges",
        "SELECT pg_catalog.has_database_privilege($1::oid, current_database(), 'CREATE'), \
                pg_catalog.has_database_privilege($1::oid, current_database(), 'TEMPORARY')",
        &[&role],
    )
    .await?;
    facts.create_on_database = db.get(0);
    facts.temp_on_database = db.get(1);
    Ok(())
}

async fn collect_tables(
    client: &Client,
    role: u32,
    tenant_column: &str,
) -> Result<Vec<TableFacts>, AuditError> {
    let rows = query(
        client,
        "tables",
        &format!(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relname::text, \
                    c.relkind = 'p', c.relispartition, c.relrowsecurity, c.relforcerowsecurity, \
                    quote_ident(pg_catalog.pg_get_userbyid(c.relowner)), \
                    pg_catalog.pg_has_role($1::oid, c.relowner, 'USAGE'), \
                    ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) p \
                          WHERE pg_catalog.has_table_privilege($1::oid, c.oid, p)), \
                    a.attnum, a.attnotnull \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_attribute a \
                    ON a.attrelid = c.oid AND a.attname = $2 AND a.attnum > 0 \
                   AND NOT a.attisdropped \
             WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMAS} \
             ORDER BY 2"
        ),
        &[&role, &tenant_column],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let attnum: Option<i16> = row.get(10);
            let not_null: Option<bool> = row.get(11);
            TableFacts {
                oid: row.get(0),
                name: row.get(1),
                relname: row.get(2),
                partitioned: row.get(3),
                partition: row.get(4),
                rls_enabled: row.get(5),
                rls_forced: row.get(6),
                owner: row.get(7),
                owned_by_pool: row.get(8),
                pool_privileges: row.get(9),
                tenant_column: attnum.map(|attnum| ColumnFacts {
                    attnum,
                    not_null: not_null.unwrap_or(false),
                }),
            }
        })
        .collect())
}

async fn collect_indexes(client: &Client) -> Result<Vec<IndexFacts>, AuditError> {
    let rows = query(
        client,
        "indexes",
        &format!(
            "SELECT i.indrelid, format('%I.%I', n.nspname, ic.relname), \
                    pg_catalog.pg_get_indexdef(i.indexrelid), i.indisprimary, i.indisunique, \
                    i.indkey::int2[] \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace \
             WHERE {SYSTEM_SCHEMAS} ORDER BY 2"
        ),
        &[],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| IndexFacts {
            table_oid: row.get(0),
            name: row.get(1),
            definition: row.get(2),
            primary: row.get(3),
            unique: row.get(4),
            keys: row.get(5),
        })
        .collect())
}

async fn collect_policies(client: &Client, role: u32) -> Result<Vec<PolicyFacts>, AuditError> {
    let rows = query(
        client,
        "policies",
        "SELECT p.polrelid, quote_ident(p.polname), p.polcmd::text, p.polpermissive, \
                ARRAY(SELECT CASE WHEN r = 0 THEN 'public' \
                                  ELSE quote_ident(pg_catalog.pg_get_userbyid(r)) END \
                      FROM unnest(p.polroles) r), \
                EXISTS (SELECT FROM unnest(p.polroles) r \
                        WHERE r = 0 OR pg_catalog.pg_has_role($1::oid, r, 'USAGE')), \
                pg_catalog.pg_get_expr(p.polqual, p.polrelid), \
                pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), \
                ARRAY(SELECT coalesce(f.prosrc, '') FROM pg_catalog.pg_depend d \
                      JOIN pg_catalog.pg_proc f ON f.oid = d.refobjid \
                      WHERE d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid \
                        AND d.refclassid = 'pg_catalog.pg_proc'::regclass) \
         FROM pg_catalog.pg_policy p ORDER BY p.polrelid, p.polname",
        &[&role],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let command: String = row.get(2);
            PolicyFacts {
                table_oid: row.get(0),
                name: row.get(1),
                command: match command.as_str() {
                    "r" => PolicyCommand::Select,
                    "a" => PolicyCommand::Insert,
                    "w" => PolicyCommand::Update,
                    "d" => PolicyCommand::Delete,
                    _ => PolicyCommand::All,
                },
                permissive: row.get(3),
                roles: row.get(4),
                applies_to_pool: row.get(5),
                using: row.get(6),
                with_check: row.get(7),
                helper_sources: row.get(8),
            }
        })
        .collect())
}

async fn collect_views(client: &Client, role: u32) -> Result<Vec<ViewFacts>, AuditError> {
    let rows = query(
        client,
        "views",
        &format!(
            "SELECT v.oid, format('%I.%I', n.nspname, v.relname), v.relkind = 'm', \
                    EXISTS (SELECT FROM pg_catalog.pg_options_to_table(v.reloptions) o \
                            WHERE o.option_name = 'security_invoker' \
                              AND lower(o.option_value) IN \
                                  ('t', 'tr', 'tru', 'true', 'y', 'ye', 'yes', 'on', '1')), \
                    quote_ident(pg_catalog.pg_get_userbyid(v.relowner)), \
                    pg_catalog.has_table_privilege($1::oid, v.oid, \
                                                   'SELECT, INSERT, UPDATE, DELETE'), \
                    ARRAY(SELECT DISTINCT d.refobjid FROM pg_catalog.pg_rewrite r \
                          JOIN pg_catalog.pg_depend d \
                            ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
                           AND d.objid = r.oid \
                           AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                           AND d.refobjid <> v.oid \
                          WHERE r.ev_class = v.oid) \
             FROM pg_catalog.pg_class v \
             JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace \
             WHERE v.relkind IN ('v', 'm') AND {SYSTEM_SCHEMAS} ORDER BY 2"
        ),
        &[&role],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| ViewFacts {
            oid: row.get(0),
            name: row.get(1),
            materialized: row.get(2),
            security_invoker: row.get(3),
            owner: row.get(4),
            pool_can_use: row.get(5),
            references: row.get(6),
        })
        .collect())
}

async fn collect_functions(client: &Client, role: u32) -> Result<Vec<FunctionFacts>, AuditError> {
    let rows = query(
        client,
        "security definer functions",
        &format!(
            "SELECT format('%I.%I(%s)', n.nspname, p.proname, \
                           pg_catalog.pg_get_function_identity_arguments(p.oid)), \
                    quote_ident(pg_catalog.pg_get_userbyid(p.proowner)), \
                    coalesce(p.prosrc, ''), \
                    ARRAY(SELECT DISTINCT d.refobjid FROM pg_catalog.pg_depend d \
                          WHERE d.classid = 'pg_catalog.pg_proc'::regclass \
                            AND d.objid = p.oid \
                            AND d.refclassid = 'pg_catalog.pg_class'::regclass) \
             FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE p.prosecdef AND {SYSTEM_SCHEMAS} \
               AND pg_catalog.has_function_privilege($1::oid, p.oid, 'EXECUTE') \
             ORDER BY 1"
        ),
        &[&role],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| FunctionFacts {
            signature: row.get(0),
            owner: row.get(1),
            source: row.get(2),
            references: row.get(3),
        })
        .collect())
}

async fn collect_activity(client: &Client, role: u32) -> Result<ActivityFacts, AuditError> {
    // A role-and-database setting beats a role setting, which beats a database setting; with
    // none, the pool role's sessions get the server's value, which is what this session got
    // unless the connected role has a setting of its own (then this is an approximation).
    let row = query_one(
        client,
        "statistics privileges",
        "SELECT pg_catalog.has_table_privilege($1::oid, 'pg_catalog.pg_stat_activity', 'SELECT'), \
                pg_catalog.has_function_privilege($1::oid, \
                    'pg_catalog.pg_stat_get_activity(integer)', 'EXECUTE'), \
                pg_catalog.has_function_privilege($1::oid, \
                    'pg_catalog.pg_stat_get_backend_activity(integer)', 'EXECUTE'), \
                coalesce(( \
                    SELECT split_part(c, '=', 2) \
                    FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c \
                    WHERE s.setrole IN ($1::oid, 0) \
                      AND s.setdatabase IN ((SELECT oid FROM pg_catalog.pg_database \
                                             WHERE datname = current_database()), 0) \
                      AND lower(split_part(c, '=', 1)) = 'track_activities' \
                    ORDER BY (s.setrole <> 0) DESC, (s.setdatabase <> 0) DESC LIMIT 1), \
                    current_setting('track_activities')) IN ('off', 'false', 'no', '0'), \
                (SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension e \
                 JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
                 WHERE e.extname = 'pg_stat_statements')",
        &[&role],
    )
    .await?;
    let mut facts = ActivityFacts {
        view_selectable: row.get(0),
        activity_function: row.get(1),
        backend_activity_function: row.get(2),
        track_activities_off: row.get(3),
        statements: None,
    };
    let statements_schema: Option<String> = row.get(4);
    if let Some(schema) = statements_schema {
        // Any function of that name in the schema: its signature changed across versions.
        let view = query_one(
            client,
            "pg_stat_statements privileges",
            "SELECT coalesce(( \
                 SELECT pg_catalog.has_table_privilege($1::oid, c.oid, 'SELECT') \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE quote_ident(n.nspname) = $2 AND c.relname = 'pg_stat_statements'), \
                 false)",
            &[&role, &schema],
        )
        .await?;
        let functions = query(
            client,
            "pg_stat_statements privileges",
            "SELECT format('%I.%I(%s)', n.nspname, p.proname, \
                           pg_catalog.pg_get_function_identity_arguments(p.oid)) \
             FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE quote_ident(n.nspname) = $2 AND p.proname = 'pg_stat_statements' \
               AND pg_catalog.has_function_privilege($1::oid, p.oid, 'EXECUTE') \
             ORDER BY 1",
            &[&role, &schema],
        )
        .await?;
        facts.statements = Some(StatementsFacts {
            view: format!("{schema}.pg_stat_statements"),
            view_selectable: view.get(0),
            functions: functions.iter().map(|row| row.get(0)).collect(),
        });
    }
    Ok(facts)
}
