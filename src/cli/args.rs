//! Task arguments from the command line: each is JSON where it is valid JSON
//! (`5` is a number, `'{"a":1}'` an object, `true` a boolean), otherwise a string.

use serde_json::{Map, Value};

/// One positional argument.
pub fn parse_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// `--kwarg key=value` pairs, values parsed like positional arguments.
pub fn parse_kwargs(pairs: &[String]) -> Result<Map<String, Value>, String> {
    let mut kwargs = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("--kwarg '{pair}' is not of the form key=value"));
        };
        if key.is_empty() {
            return Err(format!("--kwarg '{pair}' has an empty key"));
        }
        if kwargs.insert(key.to_owned(), parse_arg(value)).is_some() {
            return Err(format!("--kwarg '{key}' is given twice"));
        }
    }
    Ok(kwargs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_where_valid_else_string() {
        assert_eq!(parse_arg("5"), json!(5));
        assert_eq!(parse_arg("-2.5"), json!(-2.5));
        assert_eq!(parse_arg("true"), json!(true));
        assert_eq!(parse_arg("null"), json!(null));
        assert_eq!(parse_arg(r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(parse_arg("[1,2]"), json!([1, 2]));
        assert_eq!(parse_arg(r#""5""#), json!("5"));
        assert_eq!(parse_arg("hello"), json!("hello"));
        assert_eq!(parse_arg("{not json"), json!("{not json"));
    }

    #[test]
    fn kwargs_split_at_the_first_equals() {
        let kw = parse_kwargs(&["a=1".into(), "b=x=y".into()]).unwrap_or_default();
        assert_eq!(Value::Object(kw), json!({"a": 1, "b": "x=y"}));
        assert!(parse_kwargs(&["novalue".into()]).is_err());
        assert!(parse_kwargs(&["=1".into()]).is_err());
        assert!(parse_kwargs(&["a=1".into(), "a=2".into()]).is_err());
    }
}
