//! ERB in config files. Sidekiq renders `sidekiq.yml` with ERB before reading it, and most files
//! that use it only read the environment:
//!
//! ```yaml
//! :concurrency: <%= ENV.fetch("SIDEKIQ_CONCURRENCY", 5) %>
//! :tag: <%= ENV["APP_NAME"] || "app" %>
//! ```
//!
//! The standalone binary has no Ruby, so [`render_env`] evaluates just that: `ENV["NAME"]`,
//! `ENV.fetch("NAME")`, `ENV.fetch("NAME", default)`, `ENV.fetch("NAME") { default }`,
//! `expr || default`, literals, an optional `.to_i`/`.to_f`/`.to_s`, and `<%# comments %>`.
//! Anything else is refused with the tag it could not run. The gem's `rustq-worker` renders with
//! Ruby's own ERB instead, exactly as Sidekiq does.

/// What a tag evaluates to: Ruby's nil or a String (numbers are rendered as written).
type Value = Option<String>;

/// Renders `text`'s ERB tags with the environment (see the module docs).
pub fn render_env(text: &str) -> Result<String, String> {
    render_with(text, &|name| std::env::var(name).ok())
}

fn render_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        if let Some(after) = tag.strip_prefix("<%%") {
            out.push_str("<%");
            rest = after;
            continue;
        }
        let end = tag[2..]
            .find("%>")
            .map(|i| i + 2)
            .ok_or_else(|| format!("unclosed ERB tag: {}", first_line(tag)))?;
        let body = &tag[2..end];
        rest = &tag[end + 2..];
        if body.starts_with('#') {
            continue;
        }
        let Some(code) = body.strip_prefix('=') else {
            return Err(unsupported(&tag[..end + 2]));
        };
        let value = Parser { src: code, pos: 0 }
            .expression(env)
            .map_err(|e| match e {
                Refusal::Unsupported => unsupported(&tag[..end + 2]),
                Refusal::KeyNotFound(name) => format!(
                    "`{}`: KeyError: key not found: \"{name}\" (the environment has no {name})",
                    &tag[..end + 2]
                ),
            })?;
        out.push_str(value.as_deref().unwrap_or(""));
    }
    out.push_str(rest);
    Ok(out)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

fn unsupported(tag: &str) -> String {
    format!(
        "`{tag}` is Ruby the standalone rustq-worker cannot run: it reads ENV[\"NAME\"], \
         ENV.fetch(\"NAME\", default), `|| default` and .to_i/.to_f/.to_s. Start the gem's \
         rustq-worker inside your app to render any ERB, as Sidekiq does"
    )
}

/// Why a tag was not rendered.
enum Refusal {
    /// Ruby this evaluator does not know.
    Unsupported,
    /// `ENV.fetch("NAME")` without a default, and no NAME (Ruby raises KeyError).
    KeyNotFound(String),
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    /// `operand ( "||" operand )*`, and nothing after it.
    fn expression(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, Refusal> {
        let mut value = self.operand(env)?;
        while self.eat("||") {
            // Ruby evaluates the right side only when the left is nil (a missing
            // ENV.fetch there must not fail a value that is set).
            let fallback = self.operand(env);
            if value.is_none() {
                value = fallback?;
            } else if let Err(Refusal::Unsupported) = fallback {
                return Err(Refusal::Unsupported);
            }
        }
        self.skip_space();
        if self.pos == self.src.len() {
            Ok(value)
        } else {
            Err(Refusal::Unsupported)
        }
    }

    /// `primary ( "." conversion )?`: a method call binds tighter than `||`.
    fn operand(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, Refusal> {
        let value = self.primary(env)?;
        if self.eat(".") {
            return self.conversion(value);
        }
        Ok(value)
    }

    fn primary(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, Refusal> {
        self.skip_space();
        if self.eat("ENV") {
            if self.eat("[") {
                let name = self.string()?;
                self.expect("]")?;
                return Ok(env(&name));
            }
            self.expect(".fetch(")?;
            let name = self.string()?;
            let default = if self.eat(",") {
                Some(self.literal()?)
            } else {
                None
            };
            self.expect(")")?;
            let default = if self.eat("{") {
                let value = self.literal()?;
                self.expect("}")?;
                Some(value)
            } else {
                default
            };
            return match (env(&name), default) {
                (Some(value), _) => Ok(Some(value)),
                (None, Some(default)) => Ok(default),
                // Ruby raises KeyError here; so does the config.
                (None, None) => Err(Refusal::KeyNotFound(name)),
            };
        }
        self.literal()
    }

    /// A String, Integer, Float, nil, true or false literal.
    fn literal(&mut self) -> Result<Value, Refusal> {
        self.skip_space();
        if matches!(self.peek(), Some('"' | '\'')) {
            return self.string().map(Some);
        }
        for (word, value) in [
            ("nil", None),
            ("true", Some("true")),
            ("false", Some("false")),
        ] {
            if self.eat(word) {
                return Ok(value.map(str::to_string));
            }
        }
        let start = self.pos;
        let rest = &self.src[start..];
        let len = rest
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_digit() || c == '_' || (c == '-' && i == 0) || c == '.'))
            .map_or(rest.len(), |(i, _)| i);
        let number = rest[..len].trim_end_matches('.').replace('_', "");
        if number.is_empty() || number.parse::<f64>().is_err() {
            return Err(Refusal::Unsupported);
        }
        self.pos += rest[..len].trim_end_matches('.').len();
        Ok(Some(number))
    }

    /// A double- or single-quoted string without interpolation.
    fn string(&mut self) -> Result<String, Refusal> {
        self.skip_space();
        let quote = self
            .peek()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or(Refusal::Unsupported)?;
        let body = &self.src[self.pos + 1..];
        let end = body.find(quote).ok_or(Refusal::Unsupported)?;
        let text = &body[..end];
        if text.contains('\\') || (quote == '"' && text.contains("#{")) {
            return Err(Refusal::Unsupported);
        }
        self.pos += end + 2;
        Ok(text.to_string())
    }

    /// Ruby's `to_i`/`to_f`/`to_s` of a String or nil (`12.to_f` prints as `12.0`).
    fn conversion(&mut self, value: Value) -> Result<Value, Refusal> {
        let text = value.unwrap_or_default();
        if self.eat("to_i") {
            let text = text.trim_start();
            let sign = usize::from(text.starts_with(['-', '+']));
            let digits = text[sign..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len() - sign);
            let number: i64 = text[..sign + digits].parse().unwrap_or(0);
            Ok(Some(number.to_string()))
        } else if self.eat("to_f") {
            Ok(Some(ruby_float(leading_float(&text))))
        } else if self.eat("to_s") {
            Ok(Some(text))
        } else {
            Err(Refusal::Unsupported)
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn skip_space(&mut self) {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.src[self.pos..].starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), Refusal> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(Refusal::Unsupported)
        }
    }
}

/// The number at the start of `text`, as Ruby's `String#to_f` reads it (0.0 when none).
fn leading_float(text: &str) -> f64 {
    let text = text.trim_start();
    let bytes = text.as_bytes();
    let mut end = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    let digits = |from: usize| {
        from + bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let whole = digits(end);
    if whole == end {
        return 0.0;
    }
    end = whole;
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end = digits(end + 1);
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        let exponent = digits(end + 1 + sign);
        if exponent > end + 1 + sign {
            end = exponent;
        }
    }
    text[..end].parse().unwrap_or(0.0)
}

/// A Float as Ruby prints it: always with a fraction (`12.0`).
fn ruby_float(number: f64) -> String {
    if number.is_finite() && number.fract() == 0.0 && number.abs() < 1e16 {
        format!("{number:.1}")
    } else {
        number.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str) -> Result<String, String> {
        render_with(text, &|name| match name {
            "THREADS" => Some("12".into()),
            "NAME" => Some("billing".into()),
            "JUNK" => Some("7 dwarves".into()),
            _ => None,
        })
    }

    #[test]
    fn environment_lookups_render_as_ruby_would() {
        let cases = [
            (r#"<%= ENV["THREADS"] %>"#, "12"),
            ("<%= ENV['NAME'] %>", "billing"),
            (r#"<%= ENV["MISSING"] %>"#, ""),
            (r#"<%= ENV.fetch("THREADS", 5) %>"#, "12"),
            (r#"<%= ENV.fetch("MISSING", 5) %>"#, "5"),
            (r#"<%= ENV.fetch('MISSING') { 25 } %>"#, "25"),
            (r#"<%= ENV.fetch("MISSING", "low") %>"#, "low"),
            (r#"<%= ENV["MISSING"] || "default" %>"#, "default"),
            (r#"<%= ENV["NAME"] || "default" %>"#, "billing"),
            (r#"<%= ENV.fetch("THREADS", 5).to_i %>"#, "12"),
            (r#"<%= ENV["JUNK"].to_i %>"#, "7"),
            (r#"<%= ENV["MISSING"].to_i %>"#, "0"),
            ("<%= 2.5 %>", "2.5"),
            (r#"<%= ENV["JUNK"] || "5".to_i %>"#, "7 dwarves"),
            (r#"<%= ENV["MISSING"] || "5".to_i %>"#, "5"),
            (r#"<%= ENV["NAME"] || ENV.fetch("MISSING") %>"#, "billing"),
            (r#"<%= ENV["JUNK"].to_f %>"#, "7.0"),
            (r#"<%= ENV["THREADS"].to_f %>"#, "12.0"),
            (r#"<%= "2.5e1x".to_f %>"#, "25.0"),
            (r#"<%= "inf".to_f %>"#, "0.0"),
            ("<%= 10_000 %>", "10000"),
            ("<%# a comment %>", ""),
            ("<%%= literal %>", "<%= literal %>"),
        ];
        for (input, expected) in cases {
            assert_eq!(render(input).as_deref(), Ok(expected), "{input}");
        }
        let file =
            ":concurrency: <%= ENV.fetch(\"THREADS\", 5) %>\n:queues:\n  - <%= ENV[\"NAME\"] %>\n";
        assert_eq!(
            render(file).unwrap(),
            ":concurrency: 12\n:queues:\n  - billing\n"
        );
    }

    #[test]
    fn other_ruby_is_refused_naming_the_tag() {
        for input in [
            "<%= Rails.env %>",
            "<% if true %>x<% end %>",
            r#"<%= ENV["NAME"].upcase %>"#,
            r##"<%= "#{ENV["NAME"]}-x" %>"##,
            "<%= ENV['NAME'] ",
            "<%>",
            "<%= ENV[\"NAMÉ\"].é %>",
            "ü<%= é %>",
        ] {
            let error = render(input).unwrap_err();
            assert!(
                error.contains("cannot run")
                    || error.contains("unclosed")
                    || error.contains("KeyError"),
                "{input}: {error}"
            );
        }
        assert!(render("<%= Rails.env %>")
            .unwrap_err()
            .starts_with("`<%= Rails.env %>` is Ruby"));
        assert_eq!(
            render(r#"<%= ENV.fetch("MISSING") %>"#).unwrap_err(),
            r#"`<%= ENV.fetch("MISSING") %>`: KeyError: key not found: "MISSING" (the environment has no MISSING)"#
        );
    }
}
