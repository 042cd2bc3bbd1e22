//! Expressions and templates. Strings containing `{{ … }}` are CEL expressions (the `cel` crate) over
//! `trigger`, `vars`, `nodes.<id>.output`, `nodes.<id>.error`, `run`, and `item`/`index` inside forEach.
//! A string that is exactly one expression keeps the expression's type; mixed text interpolates. No other
//! code runs. Everything is compiled once, when a flow is loaded.
//!
//! CEL has no loops, but its macros (`map`, `filter`, `all`, `exists`) iterate, and nest: a quadratic `map`
//! over 6,000 items once took 9 s and 951 MB of one of the service's async workers. So every expression runs
//! under a cost limit ([`COST_LIMIT`], see [`guard`]), and one that iterates runs off the async workers
//! ([`Template::render_blocking`]).

use cel::common::ast::{CallExpr, Expr, IdedExpr, operators};
use cel::common::types::{CelBool, CelBytes, CelString};
use cel::common::value::CowVal;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;

/// The most work one expression may do, in cost units: one per item a macro iterates over, and per value an
/// addition (`+`) or a macro's result builds, counted deep (a list costs one plus its items' costs, a string
/// one per 16 bytes; each field or index read counts the size of what it reads, which `cel` copies). An
/// expression that goes past it fails, named, instead of taking seconds and gigabytes. A `map` over some
/// thousands of items costs a few units per item, far below it.
pub const COST_LIMIT: u64 = 250_000;

/// The function [`guard`] wraps what costs in. `@` cannot start a name in CEL source, so no flow can call it
/// or shadow it.
const CHARGE: &str = "@charge";
/// The function [`guard`] wraps the loop conditions of macros in ([`within_budget`]).
const WITHIN_BUDGET: &str = "@within_budget";

/// A compiled CEL expression.
#[derive(Clone)]
pub struct Expression {
    source: String,
    program: Arc<cel::Program>,
    /// The program's expression with its costs charged ([`guard`]): what is evaluated.
    guarded: Arc<IdedExpr>,
    /// Whether it has a macro that iterates, and so is evaluated off the async workers.
    iterates: bool,
    /// Every identifier in the expression (macro-bound ones too): the scope variables it may read.
    identifiers: Arc<[String]>,
    /// For a plain path such as `trigger.customer.id`: the variable, then the fields.
    path: Option<Arc<[String]>>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

/// A reference to another node's result: `nodes.<node>.<field>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReference {
    pub node: String,
    /// `output`, `error`, or something else (which the linter rejects).
    pub field: Option<String>,
}

/// The variables an expression is evaluated over, as JSON. A variable is converted for CEL only when an expression
/// other than a plain path reads it ([`Evaluation`]). Before, every variable of every node's scope was converted,
/// read or not, and `nodes` holds every earlier node's result: 2 % of the service's runtime threads with a one-node
/// flow (BENCHMARKS.md, "Eleventh round"), and growing with each node of a longer one.
#[derive(Default)]
pub struct Scope<'a> {
    variables: Vec<(&'static str, Cow<'a, Value>)>,
}

impl<'a> Scope<'a> {
    /// Sets a variable to a value the scope borrows.
    pub fn set(&mut self, name: &'static str, value: &'a Value) {
        self.put(name, Cow::Borrowed(value));
    }

    /// Sets a variable to a value the scope owns.
    pub fn set_owned(&mut self, name: &'static str, value: Value) {
        self.put(name, Cow::Owned(value));
    }

    fn put(&mut self, name: &'static str, value: Cow<'a, Value>) {
        self.variables.retain(|(n, _)| *n != name);
        self.variables.push((name, value));
    }

    /// The value at a plain path (variable, then fields), if every step of it is there.
    fn at_path(&self, path: &[String]) -> Option<&Value> {
        let (variable, fields) = path.split_first()?;
        let (_, value) = self.variables.iter().find(|(name, _)| name == variable)?;
        let mut value: &Value = value;
        for field in fields {
            value = value.as_object()?.get(field)?;
        }
        Some(value)
    }
}

/// JSON to CEL. Integers become CEL `int` whenever they fit, so that `trigger.points * 2` works: CEL does not
/// mix `uint` and `int` in arithmetic, and JSON has no such distinction to honour.
fn json_to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (_, _, Some(f)) => cel::Value::Float(f),
            _ => cel::Value::Null,
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => {
            let entries: std::collections::HashMap<String, cel::Value> =
                map.iter().map(|(k, v)| (k.clone(), json_to_cel(v))).collect();
            cel::Value::Map(entries.into())
        }
    }
}

thread_local! {
    /// The standard functions and macros, and [`CHARGE`], registered once per thread.
    static ROOT: cel::Context<'static, 'static> = {
        let mut env = cel::Env::stdlib();
        env.add_overload(CHARGE, "charge", vec![cel::common::types::DYN_TYPE], charge)
            .expect("`@charge` cannot clash with a standard function");
        env.add_overload(WITHIN_BUDGET, "within_budget", vec![cel::common::types::DYN_TYPE], within_budget)
            .expect("`@within_budget` cannot clash with a standard function");
        cel::Context::with_env(Arc::new(env))
    };
    /// What the expression being evaluated on this thread may still spend; `None` once it went over.
    static BUDGET: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Charges the size of a value (items of a list or map, or 16-byte units of a string) to the expression
/// being evaluated, and passes the value on untouched (not converted: that would cost as much again).
fn charge<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, cel::ExecutionError> {
    let value = args.swap_remove(0);
    let size = value.as_sizer().map_or(0, |sizer| (*sizer.size().inner()).max(0) as u64);
    let per_unit =
        if value.downcast_ref::<CelString>().is_some() || value.downcast_ref::<CelBytes>().is_some() { 16 } else { 1 };
    let cost = 1 + size / per_unit;
    BUDGET.with(|budget| match budget.get() {
        Some(left) if cost <= left => {
            budget.set(Some(left - cost));
            Ok(value)
        }
        _ => {
            budget.set(None);
            Err(cel::ExecutionError::function_error(CHARGE, "over the cost limit"))
        }
    })
}

/// A macro's loop condition, false once the expression went over its budget: `all` and `exists` would
/// otherwise go on to their last item, absorbing each charge's error.
fn within_budget<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, cel::ExecutionError> {
    if BUDGET.with(Cell::get).is_none() {
        return Ok(CowVal::Borrowed(&CelBool::FALSE));
    }
    Ok(args.swap_remove(0))
}

/// The deep size of a value in cost units, counted no further than just past `cap` (a value built of shared
/// parts can be far larger than the memory it takes).
fn cost_of(value: &cel::Value, cap: u64) -> u64 {
    match value {
        cel::Value::String(text) => 1 + text.len() as u64 / 16,
        cel::Value::Bytes(bytes) => 1 + bytes.len() as u64 / 16,
        cel::Value::List(items) => {
            let mut cost = 1;
            for item in items.iter() {
                cost += cost_of(item, cap - cost.min(cap));
                if cost > cap {
                    break;
                }
            }
            cost
        }
        cel::Value::Map(map) => {
            let mut cost = 1;
            for item in map.map.values() {
                cost += 1 + cost_of(item, cap - cost.min(cap));
                if cost > cap {
                    break;
                }
            }
            cost
        }
        _ => 1,
    }
}

/// `expr` with what may cost wrapped in [`CHARGE`]: the range of every macro (so each iteration is paid for,
/// nested ones included), every value a macro appends to its result, every `+` (strings and lists grow with
/// it), and every field or index read (`cel` copies what it reads). The accumulator's own `@result + [item]`
/// is left as it is: `cel` recognises that shape to build the result in place. A loop condition that is not a
/// constant (`all`, `exists`) is wrapped in [`WITHIN_BUDGET`], so that the loop stops once over.
fn guard(expr: &mut IdedExpr) {
    let wrap_self = match &mut expr.expr {
        Expr::Comprehension(c) => {
            for part in [&mut c.accu_init, &mut c.loop_cond, &mut c.loop_step, &mut c.result] {
                guard(part);
            }
            guard(&mut c.iter_range);
            wrap(&mut c.iter_range, CHARGE);
            if !matches!(c.loop_cond.expr, Expr::Literal(_)) {
                wrap(&mut c.loop_cond, WITHIN_BUDGET);
            }
            false
        }
        Expr::Call(call) => {
            let appends = call.func_name == operators::ADD
                && matches!(call.args.first().map(|a| &a.expr), Some(Expr::Ident(name)) if name.starts_with('@'));
            if let Some(target) = &mut call.target {
                guard(target);
            }
            for arg in &mut call.args {
                guard(arg);
            }
            if appends {
                if let Some(Expr::List(list)) = call.args.get_mut(1).map(|a| &mut a.expr) {
                    list.elements.iter_mut().for_each(|e| wrap(e, CHARGE));
                }
                false
            } else {
                call.func_name == operators::ADD || call.func_name == operators::INDEX
            }
        }
        Expr::List(list) => {
            list.elements.iter_mut().for_each(guard);
            false
        }
        Expr::Map(map) => {
            for entry in &mut map.entries {
                if let cel::common::ast::EntryExpr::MapEntry(e) = &mut entry.expr {
                    guard(&mut e.key);
                    guard(&mut e.value);
                }
            }
            false
        }
        // `a.b.c` is read in one go: the chain is charged once, as a whole.
        Expr::Select(select) if select.test => false,
        Expr::Select(select) => {
            if plain_path(&select.operand.expr).is_none() {
                guard(&mut select.operand);
            }
            true
        }
        Expr::Struct(s) => {
            for entry in &mut s.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &mut entry.expr {
                    guard(&mut f.value);
                }
            }
            false
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => false,
    };
    if wrap_self {
        wrap(expr, CHARGE);
    }
}

/// `expr` as the argument of a call of `function`.
fn wrap(expr: &mut IdedExpr, function: &str) {
    let id = expr.id;
    let inner = std::mem::replace(expr, IdedExpr { id, expr: Expr::Unspecified });
    *expr = IdedExpr { id, expr: Expr::Call(CallExpr { func_name: function.into(), target: None, args: vec![inner] }) };
}

/// The context the expressions of one render are evaluated in. A scope variable goes into it the first time an
/// expression reads it, and then serves every later expression: putting a variable into a CEL context copies
/// it whole, and copying every variable for every expression was most of the cost of rendering a node's
/// input (BENCHMARKS.md, "Tenth round").
struct Evaluation<'r, 's, 'a> {
    context: cel::Context<'r, 'static>,
    scope: &'s Scope<'a>,
    added: Vec<&'static str>,
}

impl<'r, 's, 'a> Evaluation<'r, 's, 'a> {
    fn new(root: &'r cel::Context<'static, 'static>, scope: &'s Scope<'a>) -> Self {
        Evaluation { context: root.new_inner_scope(), scope, added: Vec::new() }
    }

    fn evaluate(&mut self, expression: &Expression) -> Result<Value, String> {
        // A plain path whose every step is there is read straight from the JSON: CEL would give the same value. A
        // step that is missing, or not an object, goes to CEL for its error.
        if let Some(value) = expression.path.as_deref().and_then(|path| self.scope.at_path(path)) {
            return Ok(value.clone());
        }
        for (name, value) in &self.scope.variables {
            if !self.added.contains(name) && expression.identifiers.iter().any(|id| id == name) {
                self.context.add_variable_from_value(*name, json_to_cel(value));
                self.added.push(name);
            }
        }
        let source = &expression.source;
        BUDGET.with(|budget| budget.set(Some(COST_LIMIT)));
        let over_limit = || {
            format!(
                "{source}: over the expression cost limit ({COST_LIMIT} units: one per item iterated, and per value \
                 built); iterate over fewer items, or nest fewer macros"
            )
        };
        let value = self.context.resolve(&expression.guarded);
        // Checked whatever the result: `all` and `exists` may have absorbed the charge's error.
        let Some(left) = BUDGET.with(Cell::get) else { return Err(over_limit()) };
        let value = value.map_err(|e| format!("{source}: {e}"))?;
        // Turning a large result into JSON is work too (its parts may be shared many times over): what the
        // budget has left pays for it.
        if cost_of(&value, left) > left {
            return Err(over_limit());
        }
        value.json().map_err(|e| format!("{source}: the result cannot be expressed as JSON: {e:?}"))
    }
}

impl Expression {
    pub fn compile(source: &str) -> Result<Self, String> {
        let program =
            cel::Program::compile(source.trim()).map_err(|e| format!("invalid expression {source:?}: {e}"))?;
        let mut identifiers = Vec::new();
        walk(&program.expression().expr, &mut |expr| {
            if let Expr::Ident(name) = expr
                && !identifiers.contains(name)
            {
                identifiers.push(name.clone());
            }
        });
        let path = plain_path(&program.expression().expr).map(Arc::from);
        let mut guarded = program.expression().clone();
        guard(&mut guarded);
        let mut iterates = false;
        walk(&program.expression().expr, &mut |expr| iterates |= matches!(expr, Expr::Comprehension(_)));
        Ok(Expression {
            source: source.trim().to_string(),
            program: Arc::new(program),
            guarded: Arc::new(guarded),
            iterates,
            identifiers: identifiers.into(),
            path,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn evaluate(&self, scope: &Scope) -> Result<Value, String> {
        ROOT.with(|root| Evaluation::new(root, scope).evaluate(self))
    }

    /// [`Expression::evaluate`], off the async workers when the expression iterates ([`off_async_workers`]).
    pub fn evaluate_blocking(&self, scope: &Scope) -> Result<Value, String> {
        if self.iterates { off_async_workers(|| self.evaluate(scope)) } else { self.evaluate(scope) }
    }

    /// The top-level variables the expression reads (`trigger`, `nodes`, `item`, …), not counting the
    /// variables that macros such as `exists` or `map` bind.
    pub fn variables(&self) -> Vec<String> {
        let mut idents = Vec::new();
        let mut bound = Vec::new();
        walk(&self.program.expression().expr, &mut |expr| match expr {
            Expr::Ident(name) if !idents.contains(name) => idents.push(name.clone()),
            Expr::Comprehension(c) => {
                bound.push(c.iter_var.clone());
                bound.push(c.accu_var.clone());
                bound.extend(c.iter_var2.clone());
            }
            _ => {}
        });
        idents.retain(|name| !bound.contains(name));
        idents
    }

    /// Every chain of field selections the expression reads from a variable, longest first and each once:
    /// `trigger.customer.id + "x"` reads `["trigger", "customer", "id"]`. Selections in `has(…)` count;
    /// indexing (`trigger["x"]`, `items[0]`) ends a chain, and variables that macros bind are left out.
    pub fn field_paths(&self) -> Vec<Vec<String>> {
        let mut bound = Vec::new();
        walk(&self.program.expression().expr, &mut |expr| {
            if let Expr::Comprehension(c) = expr {
                bound.push(c.iter_var.clone());
                bound.push(c.accu_var.clone());
                bound.extend(c.iter_var2.clone());
            }
        });
        let mut found = Vec::new();
        collect_field_paths(&self.program.expression().expr, &mut found);
        found.retain(|path: &Vec<String>| !bound.contains(&path[0]));
        let mut unique: Vec<Vec<String>> = Vec::new();
        for path in found {
            if !unique.contains(&path) {
                unique.push(path);
            }
        }
        unique
    }

    /// Every `nodes.<id>…` the expression reads, with the field after the id when there is one.
    pub fn node_references(&self) -> Vec<NodeReference> {
        let mut found = Vec::new();
        collect_node_references(self.program.expression(), None, &mut found);
        found
    }
}

/// `variable.field.field…` as the variable and its fields; `None` for any other expression.
fn plain_path(expr: &Expr) -> Option<Vec<String>> {
    match expr {
        Expr::Ident(name) => Some(vec![name.clone()]),
        Expr::Select(select) if !select.test => {
            let mut path = plain_path(&select.operand.expr)?;
            path.push(select.field.clone());
            Some(path)
        }
        _ => None,
    }
}

/// The chains of field selections under `expr`: a selection from a plain path (`a.b`, or `has(a.b)`) is one
/// chain; anything else is searched below.
fn collect_field_paths(expr: &Expr, found: &mut Vec<Vec<String>>) {
    if let Expr::Select(select) = expr
        && let Some(mut path) = plain_path(&select.operand.expr)
    {
        path.push(select.field.clone());
        found.push(path);
        return;
    }
    children(expr, &mut |child| collect_field_paths(child, found));
}

fn walk(expr: &Expr, visit: &mut impl FnMut(&Expr)) {
    visit(expr);
    children(expr, &mut |child| walk(child, visit));
}

/// Calls `visit` with each direct sub-expression of `expr`.
fn children(expr: &Expr, visit: &mut impl FnMut(&Expr)) {
    match expr {
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                visit(&target.expr);
            }
            for arg in &call.args {
                visit(&arg.expr);
            }
        }
        Expr::Comprehension(c) => {
            for e in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                visit(&e.expr);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|e| visit(&e.expr)),
        Expr::Map(map) => {
            for entry in &map.entries {
                if let cel::common::ast::EntryExpr::MapEntry(e) = &entry.expr {
                    visit(&e.key.expr);
                    visit(&e.value.expr);
                }
            }
        }
        Expr::Select(select) => visit(&select.operand.expr),
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                    visit(&f.value.expr);
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Finds `nodes.X`, `nodes.X.field`, `nodes["X"]` and `nodes["X"].field`.
fn collect_node_references(expr: &IdedExpr, field: Option<&str>, found: &mut Vec<NodeReference>) {
    let node_of = |operand: &IdedExpr| -> Option<String> {
        match &operand.expr {
            Expr::Select(s) if matches!(&s.operand.expr, Expr::Ident(n) if n == "nodes") => Some(s.field.clone()),
            Expr::Call(c) if c.func_name == "_[_]" && c.args.len() == 2 => match (&c.args[0].expr, &c.args[1].expr) {
                (Expr::Ident(n), Expr::Literal(cel::common::ast::LiteralValue::String(id))) if n == "nodes" => {
                    Some(id.to_string())
                }
                _ => None,
            },
            _ => None,
        }
    };
    if let Some(node) = node_of(expr) {
        found.push(NodeReference { node, field: field.map(str::to_string) });
        return;
    }
    match &expr.expr {
        Expr::Select(select) => collect_node_references(&select.operand, Some(&select.field), found),
        Expr::Call(call) => {
            if call.func_name == "_[_]"
                && call.args.len() == 2
                && let Expr::Literal(cel::common::ast::LiteralValue::String(key)) = &call.args[1].expr
                && node_of(&call.args[0]).is_some()
            {
                collect_node_references(&call.args[0], Some(key), found);
                return;
            }
            if let Some(target) = &call.target {
                collect_node_references(target, None, found);
            }
            for arg in &call.args {
                collect_node_references(arg, None, found);
            }
        }
        Expr::Comprehension(c) => {
            for e in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                collect_node_references(e, None, found);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|e| collect_node_references(e, None, found)),
        Expr::Map(map) => {
            for entry in &map.entries {
                if let cel::common::ast::EntryExpr::MapEntry(e) = &entry.expr {
                    collect_node_references(&e.key, None, found);
                    collect_node_references(&e.value, None, found);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                    collect_node_references(&f.value, None, found);
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// A JSON value whose strings may contain `{{ expression }}`, compiled once.
#[derive(Debug, Clone)]
pub enum Template {
    Literal(Value),
    /// A string that is exactly one expression: the result keeps its type.
    Expression(Expression),
    /// Text with expressions in it: the results are interpolated as text.
    Text(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Expression(Expression),
}

/// A problem compiling a template, at a JSON pointer relative to the template's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub pointer: String,
    pub message: String,
}

impl Template {
    pub fn compile(value: &Value) -> Result<Template, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let template = compile_at(value, "", &mut errors);
        if errors.is_empty() { Ok(template) } else { Err(errors) }
    }

    /// A template for one string (an event name, a message).
    pub fn compile_text(text: &str) -> Result<Template, Vec<TemplateError>> {
        Template::compile(&Value::String(text.to_string()))
    }

    pub fn is_literal(&self) -> bool {
        matches!(self, Template::Literal(_))
    }

    /// [`Template::render`], off the async workers when one of its expressions iterates
    /// ([`off_async_workers`]); other expressions are linear in their input and the cost limit bounds them.
    pub fn render_blocking(&self, scope: &Scope) -> Result<Value, String> {
        if self.expressions().iter().any(|(_, e)| e.iterates) {
            off_async_workers(|| self.render(scope))
        } else {
            self.render(scope)
        }
    }

    pub fn render(&self, scope: &Scope) -> Result<Value, String> {
        match self {
            Template::Literal(value) => Ok(value.clone()),
            _ => ROOT.with(|root| self.render_in(&mut Evaluation::new(root, scope))),
        }
    }

    fn render_in(&self, evaluation: &mut Evaluation) -> Result<Value, String> {
        Ok(match self {
            Template::Literal(value) => value.clone(),
            Template::Expression(expression) => evaluation.evaluate(expression)?,
            Template::Text(parts) => {
                let mut text = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => text.push_str(t),
                        Part::Expression(e) => match evaluation.evaluate(e)? {
                            Value::String(s) => text.push_str(&s),
                            Value::Null => {}
                            other => text.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(text)
            }
            Template::Array(items) => {
                Value::Array(items.iter().map(|t| t.render_in(evaluation)).collect::<Result<_, _>>()?)
            }
            Template::Object(entries) => {
                let mut map = Map::new();
                for (key, template) in entries {
                    map.insert(key.clone(), template.render_in(evaluation)?);
                }
                Value::Object(map)
            }
        })
    }

    /// Every expression in the template, with the JSON pointer of the value it is in.
    pub fn expressions(&self) -> Vec<(String, &Expression)> {
        let mut found = Vec::new();
        self.collect("", &mut found);
        found
    }

    fn collect<'a>(&'a self, pointer: &str, found: &mut Vec<(String, &'a Expression)>) {
        match self {
            Template::Literal(_) => {}
            Template::Expression(e) => found.push((pointer.to_string(), e)),
            Template::Text(parts) => {
                for part in parts {
                    if let Part::Expression(e) = part {
                        found.push((pointer.to_string(), e));
                    }
                }
            }
            Template::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    item.collect(&format!("{pointer}/{i}"), found);
                }
            }
            Template::Object(entries) => {
                for (key, item) in entries {
                    item.collect(&format!("{pointer}/{}", escape_pointer(key)), found);
                }
            }
        }
    }
}

/// Runs `work` after handing this async worker's other tasks to another thread (`block_in_place`), on a
/// multi-thread Tokio runtime, so that the HTTP API, the store and lease renewals go on meanwhile; elsewhere
/// (no runtime, or a current-thread one, where there is no other worker to hand them to) simply runs it.
pub fn off_async_workers<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn compile_at(value: &Value, pointer: &str, errors: &mut Vec<TemplateError>) -> Template {
    match value {
        Value::String(text) if text.contains("{{") => match split_text(text) {
            Err(message) => {
                errors.push(TemplateError { pointer: pointer.to_string(), message });
                Template::Literal(value.clone())
            }
            Ok(parts) => {
                let mut compiled = Vec::new();
                for part in parts {
                    match part {
                        RawPart::Text(t) => compiled.push(Part::Text(t)),
                        RawPart::Expression(source) => match Expression::compile(&source) {
                            Ok(e) => compiled.push(Part::Expression(e)),
                            Err(message) => errors.push(TemplateError { pointer: pointer.to_string(), message }),
                        },
                    }
                }
                match &compiled[..] {
                    [Part::Expression(e)] => Template::Expression(e.clone()),
                    _ => Template::Text(compiled),
                }
            }
        },
        Value::Array(items) => {
            let items: Vec<Template> =
                items.iter().enumerate().map(|(i, v)| compile_at(v, &format!("{pointer}/{i}"), errors)).collect();
            if items.iter().all(Template::is_literal) {
                Template::Literal(value.clone())
            } else {
                Template::Array(items)
            }
        }
        Value::Object(map) => {
            let entries: Vec<(String, Template)> = map
                .iter()
                .map(|(k, v)| (k.clone(), compile_at(v, &format!("{pointer}/{}", escape_pointer(k)), errors)))
                .collect();
            if entries.iter().all(|(_, t)| t.is_literal()) {
                Template::Literal(value.clone())
            } else {
                Template::Object(entries)
            }
        }
        other => Template::Literal(other.clone()),
    }
}

enum RawPart {
    Text(String),
    Expression(String),
}

/// Splits `a {{ x }} b` into text and expression sources.
fn split_text(text: &str) -> Result<Vec<RawPart>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(RawPart::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| format!("unclosed {{{{ in {text:?}"))?;
        let source = after[..close].trim();
        if source.is_empty() {
            return Err(format!("empty {{{{ }}}} in {text:?}"));
        }
        parts.push(RawPart::Expression(source.to_string()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(RawPart::Text(rest.to_string()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope<'static> {
        let mut scope = Scope::default();
        scope.set_owned("trigger", json!({"customer": "c-1", "points": 120, "tags": ["a", "b"], "ratio": 0.5}));
        scope.set_owned("nodes", json!({"lookup": {"output": {"tier": "gold"}}}));
        scope
    }

    #[test]
    fn one_expression_keeps_its_type_and_text_interpolates() {
        let template = Template::compile(&json!({
            "points": "{{ trigger.points }}",
            "double": "{{ trigger.points * 2 }}",
            "half": "{{ double(trigger.points) * trigger.ratio }}",
            "label": "{{ trigger.customer }} has {{ trigger.points }} points",
            "tags": "{{ trigger.tags }}",
            "tier": "{{ nodes.lookup.output.tier }}",
            "plain": "no braces",
            "list": ["{{ trigger.points > 100 }}", 1]
        }))
        .unwrap();
        let rendered = template.render(&scope()).unwrap();
        assert_eq!(
            rendered,
            json!({
                "points": 120, "double": 240, "half": 60.0, "label": "c-1 has 120 points", "tags": ["a", "b"],
                "tier": "gold", "plain": "no braces", "list": [true, 1]
            })
        );
    }

    #[test]
    fn a_render_shares_one_context_and_each_expression_sees_what_it_reads() {
        // Macro-bound names that are also scope variables, a variable read only by a later expression, and one
        // the scope lacks: the shared context must give each expression what it read on its own.
        let mut scope = scope();
        scope.set_owned("item", json!({"sku": "x-1"}));
        let template = Template::compile(&json!({
            "first": "{{ trigger.tags.map(item, item + '!') }}",
            "outer": "{{ item.sku }}",
            "mixed": "{{ [1, 2].exists(item, item == 2) && item.sku == 'x-1' }}",
            "later": "{{ nodes.lookup.output.tier }}",
            // Not a plain path, so CEL reads `nodes` from the shared context, where no earlier expression put it.
            "latest": "{{ nodes.lookup.output.tier + '!' }}",
        }))
        .unwrap();
        assert_eq!(
            template.render(&scope).unwrap(),
            json!({"first": ["a!", "b!"], "outer": "x-1", "mixed": true, "later": "gold", "latest": "gold!"})
        );
        let missing = Template::compile(&json!(["{{ trigger.points }}", "{{ vars.limit }}"])).unwrap();
        let error = missing.render(&scope).unwrap_err();
        assert!(error.contains("vars.limit") && error.contains("vars"), "{error}");
    }

    #[test]
    fn a_plain_path_is_read_from_the_json_and_gives_what_cel_gives() {
        let mut scope = scope();
        let big = json!({"id": 18446744073709551615_u64, "f": 1.0, "deep": {"a": [1, {"b": null}], "s": "x"}});
        scope.set("item", &big);
        let with_cel = |source: &str| {
            let mut expression = Expression::compile(source).unwrap();
            expression.path = None;
            expression.evaluate(&scope)
        };
        for source in [
            "trigger",
            "trigger.points",
            "trigger.ratio",
            "trigger.tags",
            "item.id",
            "item.f",
            "item.deep",
            "item.deep.a",
            "item.deep.s",
            "nodes.lookup.output",
        ] {
            let expression = Expression::compile(source).unwrap();
            assert!(expression.path.is_some(), "{source} is a plain path");
            assert_eq!(expression.evaluate(&scope), with_cel(source), "{source}");
        }
        // Not plain paths: an index, a presence test, arithmetic.
        for source in ["trigger.tags[0]", "has(trigger.points)", "trigger.points + 1", "item.deep.a[1].b"] {
            assert!(Expression::compile(source).unwrap().path.is_none(), "{source}");
        }
        // A step that is missing, or not an object, is CEL's error.
        for source in ["trigger.nope", "nope.x", "trigger.tags.first", "item.deep.s.x", "trigger.points.x"] {
            let error = Expression::compile(source).unwrap().evaluate(&scope).unwrap_err();
            assert_eq!(Err(error), with_cel(source), "{source}");
        }
    }

    #[test]
    fn a_quadratic_expression_stops_at_the_cost_limit_and_a_linear_one_runs() {
        let items: Vec<Value> = (0..6000).map(|i| json!({"sku": format!("s-{i}"), "n": i})).collect();
        let mut scope = Scope::default();
        scope.set_owned("trigger", json!({"items": items, "text": "x".repeat(1 << 20)}));
        let run = |source: &str| Expression::compile(source).unwrap().evaluate(&scope);
        // What a flow does: one pass over thousands of items.
        assert_eq!(run("trigger.items.map(i, i.n * 2).filter(n, n % 4 == 0).size()").unwrap(), json!(3000));
        assert_eq!(run("trigger.items.exists(i, i.sku == 's-5999')").unwrap(), json!(true));
        let started = std::time::Instant::now();
        for quadratic in [
            "trigger.items.map(a, trigger.items.map(b, a.n + b.n))",
            "trigger.items.map(a, trigger.items)",
            "trigger.items.all(a, trigger.items.exists(b, b.n < 0) == false)",
            "trigger.items.map(a, trigger.text + trigger.text)",
        ] {
            let error = run(quadratic).unwrap_err();
            assert!(
                error.contains(&format!("over the expression cost limit ({COST_LIMIT} units")),
                "{quadratic}: {error}"
            );
            assert!(error.starts_with(quadratic), "names the expression: {error}");
        }
        // Each stops after the limit's worth of work, not after 36 million items and gigabytes (a generous
        // bound: this is a debug build on a shared machine).
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
        // The budget is per expression: the next one starts afresh.
        assert_eq!(run("trigger.items.map(i, i.n).size()").unwrap(), json!(6000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn work_off_the_async_workers_leaves_them_free() {
        // The runtime's one worker is handed to another thread while the work runs: a task spawned before
        // runs meanwhile, though the work never awaits (without the hand-over it would wait 5 s, in vain).
        let (sender, receiver) = std::sync::mpsc::channel();
        tokio::spawn(async move { sender.send(()).unwrap() });
        assert!(off_async_workers(|| receiver.recv_timeout(std::time::Duration::from_secs(5)).is_ok()));
        let template = Template::compile(&json!("{{ trigger.items.map(i, i * 2) }}")).unwrap();
        let mut scope = Scope::default();
        scope.set_owned("trigger", json!({"items": [1, 2, 3]}));
        assert_eq!(template.render_blocking(&scope).unwrap(), json!([2, 4, 6]));
    }

    #[test]
    fn errors_name_the_pointer() {
        let errors = Template::compile(&json!({"a": {"b": "{{ trigger. }}"}, "c": "{{ open"})).unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/a/b", "/c"]);
        assert!(errors[1].message.contains("unclosed"));
        let missing = Template::compile(&json!("{{ trigger.nope }}")).unwrap().render(&scope()).unwrap_err();
        assert!(missing.contains("trigger.nope"), "{missing}");
    }

    #[test]
    fn field_paths_are_the_chains_of_selections_read() {
        let paths = |source: &str| Expression::compile(source).unwrap().field_paths();
        let owned = |paths: &[&[&str]]| -> Vec<Vec<String>> {
            paths.iter().map(|p| p.iter().map(|s| s.to_string()).collect()).collect()
        };
        assert_eq!(paths("trigger.customer.id"), owned(&[&["trigger", "customer", "id"]]));
        assert_eq!(
            paths("string(nodes.send.output.status) + trigger.a + trigger.a"),
            owned(&[&["nodes", "send", "output", "status"], &["trigger", "a"]])
        );
        assert_eq!(paths("has(trigger.name) ? trigger.name : ''"), owned(&[&["trigger", "name"]]));
        // An index ends a chain; macro-bound variables are not read from the scope; a bare variable has no fields.
        assert_eq!(paths("trigger.items[0].sku"), owned(&[&["trigger", "items"]]));
        assert_eq!(paths("trigger.items.map(i, i.sku)"), owned(&[&["trigger", "items"]]));
        assert!(paths("size(trigger) > 0").is_empty());
    }

    #[test]
    fn node_references_are_found_in_the_ast() {
        let e =
            Expression::compile(r#"nodes.a.output.x + nodes["b"].error.message + size(nodes.c) + "nodes.d""#).unwrap();
        let refs: Vec<(String, Option<String>)> = e.node_references().into_iter().map(|r| (r.node, r.field)).collect();
        assert_eq!(refs, [("a".into(), Some("output".into())), ("b".into(), Some("error".into())), ("c".into(), None)]);
        assert_eq!(e.variables(), ["nodes"]);
    }
}
