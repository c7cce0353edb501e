//! Expansion of one raw data file into the texts of its suites.
//!
//! LaunchDarkly's harness substitutes `constants` and `parameters` into the raw text of a file, before the
//! file is parsed as a suite. This module reproduces that exactly:
//!
//! 1. the raw file is parsed only to read `constants` and `parameters`;
//! 2. with neither, the file is one suite, its raw text unchanged;
//! 3. `parameters` is a list of maps (one set per map) or a list of lists of maps (one set per combination,
//!    the first list varying fastest, the maps of a combination merged);
//! 4. for each set the text is `substitute(substitute(substitute(raw, constants), set), constants)`; with no
//!    parameters it is `substitute(raw, constants)`.
//!
//! See [`substitute`] for the textual replacement itself.

use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

use crate::ConformanceError;

/// An ordered list of placeholder names and their values.
pub type Substitutions = Vec<(String, Value)>;

/// One suite's text, after substitution.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion {
    /// The parameter set this text was made with (empty when the file has no parameters).
    pub params: Substitutions,
    /// The text to parse as the suite.
    pub text: String,
}

/// Expands the raw text of a data file into one text per parameter set.
///
/// `file` is used only in error messages.
pub fn expand(file: &str, raw: &str) -> Result<Vec<Expansion>, ConformanceError> {
    let header = parse_yaml_value(file, raw)?;
    let suite_name = match header.get("name") {
        Some(Yaml::String(name)) => name.clone(),
        _ => String::from("?"),
    };
    let structure =
        |message: String| ConformanceError::Structure { file: file.to_owned(), suite: suite_name.clone(), message };

    let constants = match header.get("constants") {
        None | Some(Yaml::Null) => Substitutions::new(),
        Some(Yaml::Mapping(map)) => mapping_to_substitutions(map).map_err(|e| structure(format!("constants: {e}")))?,
        Some(_) => return Err(structure("`constants` must be a map".to_owned())),
    };
    let parameter_sets = match header.get("parameters") {
        None | Some(Yaml::Null) => None,
        Some(Yaml::Sequence(items)) if items.is_empty() => None,
        Some(Yaml::Sequence(items)) => Some(parameter_sets(items).map_err(|e| structure(format!("parameters: {e}")))?),
        Some(_) => return Err(structure("`parameters` must be a list".to_owned())),
    };

    Ok(match parameter_sets {
        None if constants.is_empty() => vec![Expansion { params: Substitutions::new(), text: raw.to_owned() }],
        None => vec![Expansion { params: Substitutions::new(), text: substitute(raw, &constants) }],
        Some(sets) => sets
            .into_iter()
            .map(|params| {
                let text = substitute(&substitute(&substitute(raw, &constants), &params), &constants);
                Expansion { params, text }
            })
            .collect(),
    })
}

/// Replaces the placeholders of `set` in `text`, the way LaunchDarkly's harness does.
///
/// First the JSON escapes `\u003c` and `\u003e` are turned back into `<` and `>`. Then, for each name and
/// value in order: every `"<NAME>"` (quotes included) becomes the compact JSON of the value, and every other
/// `<NAME>` becomes the string itself when the value is a string, its compact JSON otherwise. Placeholders
/// that are not in `set` are left as they are.
pub fn substitute(text: &str, set: &[(String, Value)]) -> String {
    let mut out = text.replace("\\u003c", "<").replace("\\u003e", ">");
    for (name, value) in set {
        let json = value.to_string();
        out = out.replace(&format!("\"<{name}>\""), &json);
        let bare = match value {
            Value::String(s) => s.as_str(),
            _ => json.as_str(),
        };
        out = out.replace(&format!("<{name}>"), bare);
    }
    out
}

/// Parses YAML text (YAML 1.2 scalars, merge keys applied) into JSON.
///
/// `location` is used only in error messages.
pub fn parse_yaml(location: &str, text: &str) -> Result<Value, ConformanceError> {
    let yaml = parse_yaml_value(location, text)?;
    yaml_to_json(&yaml).map_err(|message| ConformanceError::Structure {
        file: location.to_owned(),
        suite: String::from("?"),
        message,
    })
}

fn parse_yaml_value(location: &str, text: &str) -> Result<Yaml, ConformanceError> {
    let yaml_error = |source| ConformanceError::Yaml { location: location.to_owned(), source };
    let mut yaml: Yaml = serde_yaml_ng::from_str(text).map_err(yaml_error)?;
    yaml.apply_merge().map_err(yaml_error)?;
    Ok(yaml)
}

/// Converts a YAML value to JSON. Map keys must be strings; tags and non-finite numbers are refused.
pub fn yaml_to_json(yaml: &Yaml) -> Result<Value, String> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("number {n} cannot be represented in JSON"))?
            }
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Mapping(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (key, value) in map {
                let Yaml::String(key) = key else {
                    return Err(format!("map key {} is not a string", describe(key)));
                };
                out.insert(key.clone(), yaml_to_json(value)?);
            }
            Value::Object(out)
        }
        Yaml::Tagged(tagged) => {
            return Err(format!("tagged value {} is not supported", tagged.tag));
        }
    })
}

fn describe(yaml: &Yaml) -> String {
    match serde_yaml_ng::to_string(yaml) {
        Ok(text) => text.trim_end().to_owned(),
        Err(_) => format!("{yaml:?}"),
    }
}

fn mapping_to_substitutions(map: &serde_yaml_ng::Mapping) -> Result<Substitutions, String> {
    map.iter()
        .map(|(key, value)| {
            let Yaml::String(name) = key else {
                return Err(format!("name {} is not a string", describe(key)));
            };
            Ok((name.clone(), yaml_to_json(value)?))
        })
        .collect()
}

/// The parameter sets of a non-empty `parameters` list, in the harness's order.
fn parameter_sets(items: &[Yaml]) -> Result<Vec<Substitutions>, String> {
    if items.iter().all(|item| matches!(item, Yaml::Mapping(_))) {
        return items.iter().filter_map(Yaml::as_mapping).map(mapping_to_substitutions).collect();
    }
    let mut lists = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Yaml::Sequence(maps) = item else {
            return Err(format!(
                "item {i} is neither a map nor a list of maps (all items must be maps, or all lists of maps)"
            ));
        };
        let mut sets = Vec::with_capacity(maps.len());
        for (j, map) in maps.iter().enumerate() {
            let Yaml::Mapping(map) = map else {
                return Err(format!("item {i}, entry {j} is not a map"));
            };
            sets.push(mapping_to_substitutions(map)?);
        }
        lists.push(sets);
    }
    Ok(cartesian_product(&lists))
}

/// Every combination of one set from each list, merged, the first list varying fastest (an odometer whose
/// digit 0 turns first). Later lists override earlier ones for a name defined twice.
fn cartesian_product(lists: &[Vec<Substitutions>]) -> Vec<Substitutions> {
    if lists.iter().any(Vec::is_empty) {
        return Vec::new();
    }
    let mut indices = vec![0usize; lists.len()];
    let mut out = Vec::new();
    loop {
        let mut merged = Substitutions::new();
        for (list, &index) in lists.iter().zip(&indices) {
            for (name, value) in &list[index] {
                match merged.iter_mut().find(|(existing, _)| existing == name) {
                    Some(slot) => slot.1 = value.clone(),
                    None => merged.push((name.clone(), value.clone())),
                }
            }
        }
        out.push(merged);

        let mut digit = 0;
        loop {
            if digit == lists.len() {
                return out;
            }
            indices[digit] += 1;
            if indices[digit] < lists[digit].len() {
                break;
            }
            indices[digit] = 0;
            digit += 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn texts(raw: &str) -> Vec<String> {
        expand("test.yml", raw).unwrap().into_iter().map(|e| e.text).collect()
    }

    fn parse(text: &str) -> Value {
        parse_yaml("test.yml", text).unwrap()
    }

    #[test]
    fn no_constants_no_parameters_keeps_raw_text() {
        let raw = "name: x\nv: \"\\u003cA\\u003e\"\n";
        assert_eq!(texts(raw), vec![raw.to_owned()]);
        // Not substituted, so the YAML escape applies at parse time.
        assert_eq!(parse(raw)["v"], json!("<A>"));
    }

    #[test]
    fn constants_quoted_and_unquoted() {
        let raw = r#"
constants:
  OBJ: { kind: "OFF" }
  STR: abc
  NUM: 12
  BOOL: true
  LIST: [1, 2]
quotedObj: "<OBJ>"
bareObj: <OBJ>
quotedStr: "<STR>"
bareStr: <STR>
inString: "x <STR> <NUM> y"
quotedNum: "<NUM>"
bareNum: <NUM>
quotedBool: "<BOOL>"
list: <LIST>
"#;
        let out = texts(raw);
        assert_eq!(out.len(), 1);
        let text = &out[0];
        assert!(text.contains(r#"quotedObj: {"kind":"OFF"}"#), "{text}");
        assert!(text.contains(r#"bareObj: {"kind":"OFF"}"#), "{text}");
        assert!(text.contains(r#"quotedStr: "abc""#), "{text}");
        assert!(text.contains("bareStr: abc\n"), "{text}");
        assert!(text.contains(r#"inString: "x abc 12 y""#), "{text}");
        assert!(text.contains("quotedNum: 12\n"), "{text}");
        assert!(text.contains("list: [1,2]\n"), "{text}");
        let v = parse(text);
        assert_eq!(v["quotedObj"], json!({"kind": "OFF"}));
        assert_eq!(v["bareObj"], json!({"kind": "OFF"}));
        assert_eq!(v["quotedStr"], json!("abc"));
        assert_eq!(v["bareStr"], json!("abc"));
        assert_eq!(v["inString"], json!("x abc 12 y"));
        assert_eq!(v["quotedNum"], json!(12));
        assert_eq!(v["bareNum"], json!(12));
        assert_eq!(v["quotedBool"], json!(true));
        assert_eq!(v["list"], json!([1, 2]));
    }

    #[test]
    fn quoted_string_values_are_json_escaped() {
        let set = vec![("S".to_owned(), json!("a \"q\" b"))];
        assert_eq!(substitute(r#"x: "<S>""#, &set), r#"x: "a \"q\" b""#);
        let set = vec![("S".to_owned(), json!(""))];
        assert_eq!(substitute(r#"x: "<S>" y: <S>."#, &set), r#"x: "" y: ."#);
    }

    #[test]
    fn list_of_maps_parameters() {
        let raw = r#"
name: n <TYPE>
parameters:
  - TYPE: bool
    VALUE: true
  - TYPE: int
    VALUE: 1
  - TYPE: string
    VALUE: "a"
v: <VALUE>
"#;
        let expansions = expand("test.yml", raw).unwrap();
        assert_eq!(expansions.len(), 3);
        let names: Vec<Value> = expansions.iter().map(|e| parse(&e.text)["name"].clone()).collect();
        assert_eq!(names, vec![json!("n bool"), json!("n int"), json!("n string")]);
        let values: Vec<Value> = expansions.iter().map(|e| parse(&e.text)["v"].clone()).collect();
        assert_eq!(values, vec![json!(true), json!(1), json!("a")]);
        assert_eq!(expansions[1].params, vec![("TYPE".to_owned(), json!("int")), ("VALUE".to_owned(), json!(1))]);
    }

    #[test]
    fn list_of_lists_parameters_first_list_varies_fastest() {
        let raw = r#"
parameters:
  -
    - A: 1
    - A: 2
  -
    - B: x
      C: c1
    - B: y
      C: c2
    - B: z
      C: c3
v: "<A><B><C>"
"#;
        let expansions = expand("test.yml", raw).unwrap();
        let got: Vec<Value> = expansions.iter().map(|e| parse(&e.text)["v"].clone()).collect();
        assert_eq!(got, vec![json!("1xc1"), json!("2xc1"), json!("1yc2"), json!("2yc2"), json!("1zc3"), json!("2zc3")]);
        assert_eq!(
            expansions[3].params,
            vec![("A".to_owned(), json!(2)), ("B".to_owned(), json!("y")), ("C".to_owned(), json!("c2"))]
        );
    }

    #[test]
    fn three_lists_give_the_full_product() {
        let raw = "parameters:\n  - [ {A: 1}, {A: 2}, {A: 3} ]\n  - [ {B: 1}, {B: 2} ]\n  - [ {C: 1}, {C: 2} ]\n";
        let expansions = expand("test.yml", raw).unwrap();
        assert_eq!(expansions.len(), 12);
        let first_three: Vec<&Substitutions> = expansions.iter().take(4).map(|e| &e.params).collect();
        assert_eq!(first_three[0][0].1, json!(1));
        assert_eq!(first_three[1][0].1, json!(2));
        assert_eq!(first_three[2][0].1, json!(3));
        assert_eq!(first_three[3][0].1, json!(1));
        assert_eq!(first_three[3][1].1, json!(2));
        assert_eq!(expansions[11].params[2].1, json!(2));
    }

    #[test]
    fn constants_are_substituted_again_after_parameters() {
        let raw = r#"
constants:
  IS_MATCH: { value: true }
parameters:
  - EXPECT: <IS_MATCH>
  - EXPECT: other
expect: <EXPECT>
"#;
        let got: Vec<Value> = texts(raw).iter().map(|t| parse(t)["expect"].clone()).collect();
        assert_eq!(got, vec![json!({"value": true}), json!("other")]);
    }

    #[test]
    fn json_escaped_angle_brackets_are_placeholders() {
        let raw = "constants:\n  X: 5\nv: \"\\u003cX\\u003e\"\nw: \"a\\u003eb\"\n";
        let text = &texts(raw)[0];
        assert!(text.contains("v: 5\n"), "{text}");
        assert_eq!(parse(text)["v"], json!(5));
        assert_eq!(parse(text)["w"], json!("a>b"));
    }

    #[test]
    fn undefined_placeholders_are_left_alone() {
        let raw = "constants:\n  A: 1\nv: \"<A> <UNDEFINED>\"\nw: <UNDEFINED>\nx: \"<UNDEFINED>\"\n";
        let v = parse(&texts(raw)[0]);
        assert_eq!(v["v"], json!("1 <UNDEFINED>"));
        assert_eq!(v["w"], json!("<UNDEFINED>"));
        assert_eq!(v["x"], json!("<UNDEFINED>"));
    }

    #[test]
    fn yaml_1_2_scalars() {
        let v = parse(
            "on: false\noff: 1\nflag: { on: true }\nwords: [on, off, yes, no, y, n, True, FALSE, ~, null]\n\
             big: 1512543600000\nneg: -101\nhalf: 1.5\none: 1.0\n\
             ts: 2017-12-06T07:00:00Z\nts2: 2017-12-06T00:00:00.000-07:00\ndate: 2017-12-06\n\
             version: 1.2.3\noctal: 0o17\n",
        );
        let obj = v.as_object().unwrap();
        assert!(obj.contains_key("on") && obj.contains_key("off"), "{v}");
        assert_eq!(v["on"], json!(false));
        assert_eq!(v["flag"], json!({"on": true}));
        assert_eq!(v["words"], json!(["on", "off", "yes", "no", "y", "n", true, false, null, null]));
        assert!(v["big"].is_i64() || v["big"].is_u64());
        assert_eq!(v["big"].as_i64(), Some(1_512_543_600_000));
        assert_eq!(v["neg"].as_i64(), Some(-101));
        assert!(v["half"].is_f64());
        assert_eq!(v["half"].as_f64(), Some(1.5));
        assert!(v["one"].is_f64());
        assert_eq!(v["ts"], json!("2017-12-06T07:00:00Z"));
        assert_eq!(v["ts2"], json!("2017-12-06T00:00:00.000-07:00"));
        assert_eq!(v["date"], json!("2017-12-06"));
        assert_eq!(v["version"], json!("1.2.3"));
        assert_eq!(v["octal"], json!(15));
    }

    #[test]
    fn merge_keys_are_applied() {
        let raw = r#"
constants:
  base: &base
    on: true
    variations: [true, false]
    fallthrough: { variation: 1 }
  rule: &rule
    id: ruleid
flags:
  f:
    <<: *base
    fallthrough: { variation: 0 }
    rules:
      - <<: *rule
        variation: 0
  g:
    <<: [ *base, *rule ]
"#;
        let v = parse(&texts(raw)[0]);
        assert_eq!(
            v["flags"]["f"],
            json!({"on": true, "variations": [true, false], "fallthrough": {"variation": 0},
                   "rules": [{"id": "ruleid", "variation": 0}]})
        );
        assert_eq!(
            v["flags"]["g"],
            json!({"on": true, "variations": [true, false], "fallthrough": {"variation": 1}, "id": "ruleid"})
        );
    }

    #[test]
    fn non_string_keys_are_refused() {
        let err = parse_yaml("test.yml", "1: a\n").unwrap_err();
        assert!(err.to_string().contains("not a string"), "{err}");
    }

    #[test]
    fn malformed_parameters_are_refused() {
        let err = expand("bad.yml", "name: s\nparameters:\n  - A: 1\n  - [ {A: 2} ]\n").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("bad.yml") && message.contains("\"s\""), "{message}");
        let err = expand("bad.yml", "name: s\nparameters: 3\n").unwrap_err();
        assert!(matches!(err, ConformanceError::Structure { .. }), "{err}");
        let err = expand("bad.yml", "name: [unclosed\n").unwrap_err();
        assert!(matches!(err, ConformanceError::Yaml { .. }), "{err}");
        assert!(err.to_string().starts_with("bad.yml: invalid YAML"), "{err}");
    }
}
