//! DaVinci property values to flowhost templates: Slate rich text to plain text, and `{{local...}}` /
//! `{{global...}}` references to CEL over `nodes`, `trigger` and `vars`.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// What a DaVinci node id stands for in the imported flow.
#[derive(Debug, Clone)]
pub enum Target {
    /// A flowhost node with this id.
    Node(String),
    /// The flow's trigger node: its output is the event.
    Trigger,
}

/// What references resolve against, and what they used.
pub struct Scope<'a> {
    pub ids: &'a HashMap<String, Target>,
    /// Variables the references read (their names), so that the flow declares them in `vars`.
    pub variables: BTreeSet<String>,
}

/// A piece of text: literal, or a reference (the text between `{{` and `}}`).
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Reference(String),
}

/// Translates a property value: strings (plain or rich text) become literals or templates, inside arrays and
/// objects too. `text_field` says the property is a text field in DaVinci, where a reference is replaced by its
/// text: a string that is one reference then becomes `string(...)`, as DaVinci would have written it.
pub fn translate_value(value: &Value, text_field: bool, scope: &mut Scope) -> Result<Value, String> {
    match value {
        Value::String(text) => translate_text(text, text_field, scope).map(Value::String),
        Value::Array(items) => {
            items.iter().map(|item| translate_value(item, false, scope)).collect::<Result<_, _>>().map(Value::Array)
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), translate_value(v, false, scope)?)))
            .collect::<Result<_, String>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

/// Whether a string holds a reference (plain `{{...}}` or a rich-text link).
pub fn has_reference(text: &str) -> bool {
    pieces(text).is_ok_and(|pieces| pieces.iter().any(|p| matches!(p, Piece::Reference(_))))
}

/// The plain text of a string (rich text flattened), when it holds no reference.
pub fn plain_text(text: &str) -> Option<String> {
    let pieces = pieces(text).ok()?;
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Reference(_) => return None,
        }
    }
    Some(out)
}

/// Rich text as plain text with its references written `{{...}}` as in plain DaVinci text.
pub fn flatten(text: &str) -> Result<String, String> {
    Ok(pieces(text)?
        .into_iter()
        .map(|piece| match piece {
            Piece::Text(t) => t,
            Piece::Reference(r) => format!("{{{{{r}}}}}"),
        })
        .collect())
}

/// A string as a flowhost template.
pub fn translate_text(text: &str, text_field: bool, scope: &mut Scope) -> Result<String, String> {
    let pieces = pieces(text)?;
    if let [Piece::Reference(reference)] = pieces.as_slice() {
        let expression = reference_to_cel(reference, scope)?;
        return Ok(if text_field {
            format!("{{{{ string({expression}) }}}}")
        } else {
            format!("{{{{ {expression} }}}}")
        });
    }
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Reference(reference) => {
                out.push_str(&format!("{{{{ {} }}}}", reference_to_cel(&reference, scope)?));
            }
        }
    }
    Ok(out)
}

/// Splits a value into text and references: a Slate document (JSON text of `[{"children": [...]}]`) by its
/// link elements, plain text by `{{...}}` (a lone `}}` is text: JSON in a text area closes objects with it).
fn pieces(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    match slate(text) {
        Some(blocks) => {
            for (i, block) in blocks.iter().enumerate() {
                if i > 0 {
                    pieces.push(Piece::Text("\n".into()));
                }
                slate_pieces(block, &mut pieces)?;
            }
        }
        None => plain_pieces(text, &mut pieces)?,
    }
    // Adjacent texts are one text.
    let mut merged: Vec<Piece> = Vec::new();
    for piece in pieces {
        match (merged.last_mut(), piece) {
            (Some(Piece::Text(last)), Piece::Text(t)) => last.push_str(&t),
            (_, Piece::Text(t)) if t.is_empty() => {}
            (_, piece) => merged.push(piece),
        }
    }
    Ok(merged)
}

/// A Slate document: a JSON array of elements that each have `children`.
fn slate(text: &str) -> Option<Vec<Value>> {
    if !text.trim_start().starts_with('[') {
        return None;
    }
    let Ok(Value::Array(blocks)) = serde_json::from_str::<Value>(text) else { return None };
    let is_element = |v: &Value| v.get("children").is_some_and(Value::is_array);
    (!blocks.is_empty() && blocks.iter().all(is_element)).then_some(blocks)
}

fn slate_pieces(element: &Value, out: &mut Vec<Piece>) -> Result<(), String> {
    if let Some(text) = element.get("text").and_then(Value::as_str) {
        // A leaf's text is literal in DaVinci; braces in it would be an expression in flowhost.
        if text.contains("{{") {
            return Err(format!(
                "the rich text {text:?} has a literal `{{{{`, which flowhost would read as an expression"
            ));
        }
        out.push(Piece::Text(text.to_string()));
        return Ok(());
    }
    if element.get("type").and_then(Value::as_str) == Some("link") {
        let data = element
            .get("data")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("a rich-text link without a reference in `data`: {element}"))?;
        let mut inner = Vec::new();
        plain_pieces(data, &mut inner)?;
        inner.retain(|p| *p != Piece::Text(String::new()));
        return match inner.as_slice() {
            [Piece::Reference(_)] => {
                out.extend(inner);
                Ok(())
            }
            _ => Err(format!("a rich-text link whose `data` is not one reference: {data:?}")),
        };
    }
    for child in element.get("children").and_then(Value::as_array).into_iter().flatten() {
        slate_pieces(child, out)?;
    }
    Ok(())
}

fn plain_pieces(text: &str, out: &mut Vec<Piece>) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push(Piece::Text(rest[..start].to_string()));
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| format!("`{{{{` without `}}}}` in {text:?}"))?;
        out.push(Piece::Reference(after[..end].trim().to_string()));
        rest = &after[end + 2..];
    }
    out.push(Piece::Text(rest.to_string()));
    Ok(())
}

/// `local.<id>.payload.output.x` -> `nodes.<id>.output.x`, `local.<id>.payload.success` -> a status test,
/// `global.(flow.|company.)variables.<name>` -> `vars.<name>`, `global.parameters.<name>` -> `trigger.<name>`.
pub fn reference_to_cel(reference: &str, scope: &mut Scope) -> Result<String, String> {
    let segments: Vec<&str> = reference.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(format!("the reference {{{{{reference}}}}} is malformed"));
    }
    let unsupported = || format!("the reference {{{{{reference}}}}} has no flowhost equivalent");
    match segments.as_slice() {
        ["local", id, "payload", rest @ ..] => {
            let target = scope.ids.get(*id).ok_or_else(|| {
                format!("the reference {{{{{reference}}}}} reads node {id:?}, which is not in this flow")
            })?;
            match (target, rest) {
                (Target::Node(node), ["output", path @ ..]) => Ok(format!("nodes.{node}.output{}", path_to_cel(path)?)),
                (Target::Node(node), ["success"]) => Ok(format!("nodes.{node}.status == \"succeeded\"")),
                (Target::Trigger, ["output", path @ ..]) => Ok(format!("trigger{}", path_to_cel(path)?)),
                (Target::Trigger, ["success"]) => Ok("true".into()),
                _ => Err(unsupported()),
            }
        }
        ["global", "variables", name, path @ ..]
        | ["global", "flow", "variables", name, path @ ..]
        | ["global", "company", "variables", name, path @ ..] => {
            scope.variables.insert(name.to_string());
            Ok(format!("vars{}", path_to_cel(&[&[*name], path].concat())?))
        }
        ["global", "parameters", path @ ..] if !path.is_empty() => Ok(format!("trigger{}", path_to_cel(path)?)),
        _ => Err(unsupported()),
    }
}

/// `a.b[0]` segments as CEL field selections; names that are not CEL identifiers are indexed by string.
fn path_to_cel(segments: &[&str]) -> Result<String, String> {
    let mut out = String::new();
    for segment in segments {
        let (name, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (*segment, ""),
        };
        if !name.is_empty() {
            if is_identifier(name) {
                out.push('.');
                out.push_str(name);
            } else {
                out.push_str(&format!("[{}]", Value::String(name.to_string())));
            }
        }
        let mut rest = indexes;
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(|| format!("unbalanced `[` in {segment:?}"))?;
            let index: u64 = rest[1..close].trim().parse().map_err(|_| format!("not a list index in {segment:?}"))?;
            out.push_str(&format!("[{index}]"));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(format!("unexpected text after `]` in {segment:?}"));
            }
        }
    }
    Ok(out)
}

/// CEL identifiers that are not reserved words.
fn is_identifier(name: &str) -> bool {
    const RESERVED: [&str; 17] = [
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
    ];
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope(ids: &HashMap<String, Target>) -> Scope<'_> {
        Scope { ids, variables: BTreeSet::new() }
    }

    fn ids() -> HashMap<String, Target> {
        HashMap::from([("n1".to_string(), Target::Node("create".into())), ("t0".to_string(), Target::Trigger)])
    }

    #[test]
    fn references_become_cel() {
        let ids = ids();
        let mut s = scope(&ids);
        assert_eq!(reference_to_cel("local.n1.payload.output.id", &mut s).unwrap(), "nodes.create.output.id");
        assert_eq!(
            reference_to_cel("local.n1.payload.output.rawResponse.my-field[2]", &mut s).unwrap(),
            "nodes.create.output.rawResponse[\"my-field\"][2]"
        );
        assert_eq!(
            reference_to_cel("local.n1.payload.success", &mut s).unwrap(),
            "nodes.create.status == \"succeeded\""
        );
        assert_eq!(reference_to_cel("local.t0.payload.output.email", &mut s).unwrap(), "trigger.email");
        assert_eq!(reference_to_cel("global.variables.tier", &mut s).unwrap(), "vars.tier");
        assert_eq!(reference_to_cel("global.flow.variables.pod", &mut s).unwrap(), "vars.pod");
        assert_eq!(reference_to_cel("global.company.variables.region", &mut s).unwrap(), "vars.region");
        assert_eq!(reference_to_cel("global.parameters.customerId", &mut s).unwrap(), "trigger.customerId");
        assert_eq!(s.variables.iter().collect::<Vec<_>>(), ["pod", "region", "tier"]);
        assert!(reference_to_cel("local.zz.payload.output.x", &mut s).unwrap_err().contains("not in this flow"));
        assert!(reference_to_cel("global.session.x", &mut s).unwrap_err().contains("no flowhost equivalent"));
    }

    #[test]
    fn rich_text_becomes_a_string_or_an_interpolation() {
        let ids = ids();
        let mut s = scope(&ids);
        let rich = json!([{"children": [
            {"text": "Hello "},
            {"type": "link", "data": "{{local.n1.payload.output.name}}", "children": [{"text": "name"}]},
            {"text": "!"}
        ]}, {"children": [{"text": "bye"}]}])
        .to_string();
        assert_eq!(translate_text(&rich, true, &mut s).unwrap(), "Hello {{ nodes.create.output.name }}!\nbye");
        assert_eq!(flatten(&rich).unwrap(), "Hello {{local.n1.payload.output.name}}!\nbye");
        let one = json!([{"children": [{"type": "link", "data": "{{local.n1.payload.output.id}}", "children": []}]}]);
        assert_eq!(translate_text(&one.to_string(), true, &mut s).unwrap(), "{{ string(nodes.create.output.id) }}");
        assert_eq!(translate_text(&one.to_string(), false, &mut s).unwrap(), "{{ nodes.create.output.id }}");
        let plain = json!([{"children": [{"text": "just text"}]}]).to_string();
        assert_eq!(translate_text(&plain, true, &mut s).unwrap(), "just text");
        assert_eq!(plain_text(&plain).as_deref(), Some("just text"));
        assert_eq!(translate_text("id {{global.variables.x}}", true, &mut s).unwrap(), "id {{ vars.x }}");
        let braces = json!([{"children": [{"text": "a {{b}}"}]}]).to_string();
        assert!(translate_text(&braces, true, &mut s).is_err());
        assert!(translate_text("open {{ only", true, &mut s).is_err());
    }
}
