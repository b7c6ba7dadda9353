//! The guard's authority: a suspect text is parsed with the PostgreSQL grammar (`pg_query`)
//! and every node of the tree is visited. The tree is walked through its serde form so that no
//! node type can be missed (pg_query's own node iterator covers only a subset); the few node
//! shapes that matter are read from it:
//!
//! - `VariableSetStmt` (top level, in `ALTER ROLE|DATABASE|SYSTEM`, in function `SET` clauses);
//! - `FuncCall` of `set_config` (any schema) and of the functions that run SQL text;
//! - `String` name nodes naming those functions outside a call (`SFUNC = set_config`);
//! - `DiscardStmt`, `DoStmt`, `CreateFunctionStmt`;
//! - writes to `pg_settings`, and views or rules over it.
//!
//! It never executes anything and never rewrites the text.

use serde_json::{Map, Value as Json};

use super::settings::{self, Action, Place, Scope, Value};
use super::{Guard, MAX_NESTING, Refusal, TenantValue, body, rule};

/// Functions that run SQL given as text, with the position of that text among their
/// parameters and the parameters' names (for named notation).
const DYNAMIC_SQL_FUNCTIONS: &[(&str, usize, &[&str])] = &[
    (
        "query_to_xml",
        0,
        &["query", "nulls", "tableforest", "targetns"],
    ),
    (
        "query_to_xmlschema",
        0,
        &["query", "nulls", "tableforest", "targetns"],
    ),
    (
        "query_to_xml_and_xmlschema",
        0,
        &["query", "nulls", "tableforest", "targetns"],
    ),
    ("ts_stat", 0, &["query", "weights"]),
];

const SET_CONFIG_PARAMETERS: &[&str] = &["setting_name", "new_value", "is_local"];

/// Names that must not appear as a bare name (only as a direct call).
fn is_guarded_function(name: &str) -> bool {
    name.eq_ignore_ascii_case("set_config")
        || name.eq_ignore_ascii_case("ts_rewrite")
        || DYNAMIC_SQL_FUNCTIONS
            .iter()
            .any(|(f, _, _)| name.eq_ignore_ascii_case(f))
}

/// Parses `sql` and checks every statement. `depth` counts SQL text nested in a literal.
pub(super) fn check_parsed(
    guard: &Guard,
    sql: &str,
    depth: usize,
    tenant_values: &mut Vec<TenantValue>,
) -> Result<(), Refusal> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).map_err(|e| {
        Refusal::new(
            rule::UNPARSABLE,
            format!(
                "a statement that may touch a guarded setting and that the PostgreSQL grammar rejects ({e})"
            ),
        )
    })?;
    let tree = serde_json::to_value(&parsed.protobuf).map_err(|_| {
        Refusal::new(
            rule::UNPARSABLE,
            "a statement whose parse tree pgtenant cannot read",
        )
    })?;
    let walker = Walker {
        guard,
        depth,
        tenant_values,
    };
    walker.check_statements(&tree)
}

struct Walker<'g, 'v> {
    guard: &'g Guard,
    depth: usize,
    tenant_values: &'v mut Vec<TenantValue>,
}

impl Walker<'_, '_> {
    fn check_statements(mut self, tree: &Json) -> Result<(), Refusal> {
        let statements = tree.get("stmts").and_then(Json::as_array);
        for raw in statements.into_iter().flatten() {
            let Some((kind, stmt)) = raw.get("stmt").and_then(node) else {
                continue;
            };
            // A SET the client runs itself, or set_config in a SELECT it runs itself: the only
            // places where setting the tenant (to its own) is accepted.
            let place = if self.depth == 0 {
                Place::Direct
            } else {
                Place::Nested
            };
            match kind {
                "VariableSetStmt" => self.check_variable_set(stmt, place)?,
                "SelectStmt" => self.visit(kind, stmt, place)?,
                _ => self.visit(kind, stmt, Place::Nested)?,
            }
        }
        Ok(())
    }

    /// Visits every node under `value`.
    fn walk(&mut self, value: &Json, place: Place) -> Result<(), Refusal> {
        match value {
            Json::Array(items) => items.iter().try_for_each(|v| self.walk(v, place)),
            Json::Object(map) => {
                for (key, child) in map {
                    self.visit(key, child, place)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One field of a node (or one node, keyed by its type).
    fn visit(&mut self, key: &str, child: &Json, place: Place) -> Result<(), Refusal> {
        match key {
            // `setstmt` holds a bare VariableSetStmt in ALTER ROLE|DATABASE|SYSTEM.
            "VariableSetStmt" | "setstmt" => self.check_variable_set(child, Place::Nested),
            // `funccall` holds a bare FuncCall in CALL.
            "FuncCall" | "funccall" => self.check_func_call(child, place),
            "String" => {
                let name = child.get("sval").and_then(Json::as_str).unwrap_or("");
                if is_guarded_function(name) {
                    return Err(Refusal::new(
                        rule::FUNCTION_REFERENCE,
                        format!("naming the function \"{name}\" other than in a direct call"),
                    ));
                }
                Ok(())
            }
            "DiscardStmt" => {
                // DiscardMode: 1 = ALL (PLANS, SEQUENCES, TEMP leave settings alone).
                if child.get("target").and_then(Json::as_i64) == Some(1) {
                    return Err(Refusal::new(
                        rule::DISCARD_ALL,
                        "DISCARD ALL: it would clear the tenant setting; pgtenant resets servers between clients itself",
                    ));
                }
                Ok(())
            }
            "DoStmt" => {
                self.check_routine(child.get("args"), "a DO block", Some("plpgsql"))?;
                self.walk(child, Place::Nested)
            }
            "CreateFunctionStmt" => {
                let what = if child.get("is_procedure").and_then(Json::as_bool) == Some(true) {
                    "a procedure body"
                } else {
                    "a function body"
                };
                // SQL-standard bodies (BEGIN ATOMIC, RETURN) are parsed trees: walked below.
                let default_language = child
                    .get("sql_body")
                    .is_some_and(|b| !b.is_null())
                    .then_some("sql");
                self.check_routine(child.get("options"), what, default_language)?;
                self.walk(child, Place::Nested)
            }
            "UpdateStmt" | "InsertStmt" | "DeleteStmt" | "MergeStmt" => {
                let target = child
                    .get("relation")
                    .and_then(|r| r.get("relname"))
                    .and_then(Json::as_str);
                if target.is_some_and(|r| r.eq_ignore_ascii_case("pg_settings")) {
                    return Err(pg_settings_refusal("writing to pg_settings"));
                }
                self.walk(child, place)
            }
            "ViewStmt" | "RuleStmt" => {
                if mentions_relation(child, "pg_settings") {
                    return Err(pg_settings_refusal("a view or rule over pg_settings"));
                }
                self.walk(child, Place::Nested)
            }
            _ => self.walk(child, place),
        }
    }

    fn check_variable_set(&mut self, stmt: &Json, place: Place) -> Result<(), Refusal> {
        let name = stmt.get("name").and_then(Json::as_str).unwrap_or("");
        let is_local = stmt.get("is_local").and_then(Json::as_bool) == Some(true);
        // VariableSetKind: 1 VALUE, 2 DEFAULT, 3 CURRENT, 4 MULTI, 5 RESET, 6 RESET ALL.
        let action = match stmt.get("kind").and_then(Json::as_i64) {
            Some(1) => match stmt.get("args").and_then(Json::as_array).map(Vec::as_slice) {
                Some([single]) => Action::Set(set_value(single)),
                _ => Action::Set(Value::Other),
            },
            Some(2 | 5) => Action::Reset,
            Some(3) => Action::FromCurrent,
            // SET TRANSACTION …, SET SESSION CHARACTERISTICS …: no configuration parameter.
            Some(4) => return Ok(()),
            Some(6) => {
                return Err(Refusal::new(
                    rule::RESET_ALL,
                    "RESET ALL: it would clear the tenant setting; reset settings one by one",
                ));
            }
            _ => {
                return Err(Refusal::new(
                    rule::UNPARSABLE,
                    "a SET statement pgtenant cannot read",
                ));
            }
        };
        let scope = if is_local && place == Place::Direct {
            Scope::Local
        } else {
            Scope::Session
        };
        settings::check_assignment(self.guard, name, action, scope, place, self.tenant_values)
    }

    fn check_func_call(&mut self, call: &Json, place: Place) -> Result<(), Refusal> {
        let names: Vec<&str> = call
            .get("funcname")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(string_node)
            .collect();
        let function = names.last().copied().unwrap_or("");
        let args = call
            .get("args")
            .and_then(Json::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let variadic = call.get("func_variadic").and_then(Json::as_bool) == Some(true);
        if function.eq_ignore_ascii_case("set_config") {
            self.check_set_config(args, variadic, place)?;
        } else if let Some((_, position, parameters)) = DYNAMIC_SQL_FUNCTIONS
            .iter()
            .find(|(f, _, _)| function.eq_ignore_ascii_case(f))
        {
            let sql = if variadic {
                None
            } else {
                bind_arguments(args, parameters).and_then(|slots| slots[*position])
            };
            self.check_sql_argument(function, sql)?;
        } else if function.eq_ignore_ascii_case("ts_rewrite") && args.len() == 2 {
            // ts_rewrite(tsquery, text) runs its second argument; it has no parameter names.
            let sql = (!variadic
                && args
                    .iter()
                    .all(|a| node(a).is_some_and(|(k, _)| k != "NamedArgExpr")))
            .then(|| &args[1]);
            self.check_sql_argument(function, sql)?;
        }
        // Arguments may call set_config in their turn; the name itself was handled above.
        for (key, child) in call.as_object().into_iter().flat_map(Map::iter) {
            if key != "funcname" {
                self.visit(key, child, place)?;
            }
        }
        Ok(())
    }

    fn check_set_config(
        &mut self,
        args: &[Json],
        variadic: bool,
        place: Place,
    ) -> Result<(), Refusal> {
        let slots = if variadic {
            None
        } else {
            bind_arguments(args, SET_CONFIG_PARAMETERS)
        };
        let Some([Some(name), Some(value), Some(is_local)]) = slots.as_deref() else {
            return Err(Refusal::new(
                rule::SET_CONFIG_DYNAMIC,
                "set_config with arguments pgtenant cannot read",
            ));
        };
        let Some(name) = string_literal(name) else {
            return Err(Refusal::new(
                rule::SET_CONFIG_DYNAMIC,
                "set_config whose setting name is not a plain string literal",
            ));
        };
        let scope = match literal_bool(is_local) {
            Some(true) => Scope::Local,
            Some(false) => Scope::Session,
            None => Scope::Unknown,
        };
        let value = match string_literal(value) {
            Some(v) => Value::Literal(v.to_owned()),
            None => param_number(value).map_or(Value::Other, Value::Param),
        };
        settings::check_assignment(
            self.guard,
            name,
            Action::Set(value),
            scope,
            place,
            self.tenant_values,
        )
    }

    /// SQL text handed to a function that runs it: a literal is checked as SQL in its turn
    /// (never as a place where the tenant may be set), anything else is refused.
    fn check_sql_argument(&mut self, function: &str, sql: Option<&Json>) -> Result<(), Refusal> {
        let literal = sql.and_then(string_literal);
        match literal {
            Some(text) if self.depth < MAX_NESTING => {
                check_parsed(self.guard, text, self.depth + 1, self.tenant_values)
            }
            _ => Err(Refusal::new(
                rule::DYNAMIC_SQL,
                format!("{function} with SQL text that is not a plain literal"),
            )),
        }
    }

    /// Language and body of a DO block (`args`) or function (`options`): lists of DefElem.
    fn check_routine(
        &mut self,
        options: Option<&Json>,
        what: &str,
        default_language: Option<&str>,
    ) -> Result<(), Refusal> {
        let mut language = default_language;
        let mut bodies: Vec<&str> = Vec::new();
        for option in options.and_then(Json::as_array).into_iter().flatten() {
            let Some(("DefElem", def)) = node(option) else {
                continue;
            };
            let arg = def.get("arg");
            match def.get("defname").and_then(Json::as_str) {
                Some("language") => language = arg.and_then(string_node),
                Some("as") => {
                    if let Some(text) = arg.and_then(string_node) {
                        bodies.push(text);
                    } else if let Some(("List", list)) = arg.and_then(node) {
                        let items = list.get("items").and_then(Json::as_array);
                        bodies.extend(items.into_iter().flatten().filter_map(string_node));
                    }
                }
                _ => {}
            }
        }
        if bodies.is_empty() && default_language == Some("sql") {
            return Ok(());
        }
        let language = language.unwrap_or("");
        if !(language.eq_ignore_ascii_case("plpgsql") || language.eq_ignore_ascii_case("sql")) {
            return Err(Refusal::new(
                rule::ROUTINE_LANGUAGE,
                format!(
                    "{what} in language \"{language}\": pgtenant reads only plpgsql and sql bodies"
                ),
            ));
        }
        if let Some(mention) = bodies
            .iter()
            .find_map(|b| body::forbidden_mention(self.guard, b))
        {
            return Err(Refusal::new(
                rule::ROUTINE_BODY,
                format!(
                    "{what} that mentions \"{mention}\" (the tenant setting, set_config, dynamic SQL or another guarded setting)"
                ),
            ));
        }
        Ok(())
    }
}

fn pg_settings_refusal(what: &str) -> Refusal {
    Refusal::new(
        rule::PG_SETTINGS_WRITE,
        format!("{what}: its update rule calls set_config"),
    )
}

/// `{"node": {"Kind": {...}}}` → `("Kind", {...})`.
fn node(value: &Json) -> Option<(&str, &Json)> {
    let inner = value.get("node")?.as_object()?;
    let (kind, fields) = inner.iter().next()?;
    Some((kind.as_str(), fields))
}

/// The text of a `String` node (a name or a name part).
fn string_node(value: &Json) -> Option<&str> {
    match node(value)? {
        ("String", s) => s.get("sval")?.as_str(),
        _ => None,
    }
}

/// A bare string constant (no cast: `'…'::varchar(5)` could change the value).
fn string_literal(value: &Json) -> Option<&str> {
    match node(value)? {
        ("AConst", c) => c.get("val")?.get("Sval")?.get("sval")?.as_str(),
        _ => None,
    }
}

/// A literal `true`/`false`, or a string literal PostgreSQL reads as a boolean.
fn literal_bool(value: &Json) -> Option<bool> {
    let (kind, c) = node(value)?;
    if kind != "AConst" {
        return None;
    }
    let val = c.get("val")?;
    if let Some(b) = val.get("Boolval") {
        return Some(b.get("boolval").and_then(Json::as_bool).unwrap_or(false));
    }
    let s = val.get("Sval")?.get("sval")?.as_str()?;
    if settings::parses_as_true(s) {
        Some(true)
    } else {
        // Anything else is false or an error in PostgreSQL; either way not transaction-scoped.
        Some(false)
    }
}

fn param_number(value: &Json) -> Option<usize> {
    match node(value)? {
        ("ParamRef", p) => usize::try_from(p.get("number")?.as_i64()?)
            .ok()
            .filter(|n| *n > 0),
        _ => None,
    }
}

/// A `SET` value, as PostgreSQL flattens a single one: strings as they are, integers in
/// decimal, other numbers as written; `$n`; anything else is [`Value::Other`].
fn set_value(arg: &Json) -> Value {
    if let Some(s) = string_literal(arg) {
        return Value::Literal(s.to_owned());
    }
    if let Some(n) = param_number(arg) {
        return Value::Param(n);
    }
    let number = node(arg)
        .filter(|(kind, _)| *kind == "AConst")
        .and_then(|(_, c)| c.get("val"))
        .and_then(|val| {
            val.get("Ival")
                .map(|i| {
                    i.get("ival")
                        .and_then(Json::as_i64)
                        .unwrap_or(0)
                        .to_string()
                })
                .or_else(|| {
                    val.get("Fval")
                        .and_then(|f| f.get("fval"))
                        .and_then(Json::as_str)
                        .map(str::to_owned)
                })
        });
    number.map_or(Value::Other, Value::Literal)
}

/// Maps a call's arguments (positional first, then `name => value`) onto the function's
/// parameters. `None` when an argument is unknown, repeated or beyond the last parameter.
fn bind_arguments<'a>(args: &'a [Json], parameters: &[&str]) -> Option<Vec<Option<&'a Json>>> {
    let mut slots = vec![None; parameters.len()];
    let mut position = 0;
    for arg in args {
        match node(arg) {
            Some(("NamedArgExpr", named)) => {
                let name = named.get("name")?.as_str()?;
                let index = parameters
                    .iter()
                    .position(|p| p.eq_ignore_ascii_case(name))?;
                if slots[index].is_some() {
                    return None;
                }
                slots[index] = Some(named.get("arg")?);
            }
            _ => {
                let slot = slots.get_mut(position)?;
                if slot.is_some() {
                    return None;
                }
                *slot = Some(arg);
                position += 1;
            }
        }
    }
    Some(slots)
}

/// Whether any `relname` under `value` is `relation`.
fn mentions_relation(value: &Json, relation: &str) -> bool {
    match value {
        Json::Array(items) => items.iter().any(|v| mentions_relation(v, relation)),
        Json::Object(map) => map.iter().any(|(k, v)| {
            (k == "relname" && v.as_str().is_some_and(|r| r.eq_ignore_ascii_case(relation)))
                || mentions_relation(v, relation)
        }),
        _ => false,
    }
}
