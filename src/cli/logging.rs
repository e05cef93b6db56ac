//! Where every command's log goes (stderr) and how it looks: text, coloured only on a
//! terminal and never with NO_COLOR set, or one JSON object per line; optionally with a
//! node's name on every line, to tell the nodes of `spool dev-cluster` apart.

use std::ffi::OsStr;
use std::fmt;
use std::io::IsTerminal;

use clap::ValueEnum;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log-format`, `SPOOL_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, fields.message, target; node when
    /// labelled) for log shippers.
    Json,
}

impl LogFormat {
    /// The spelling a flag takes.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Colours only for a person at a terminal: stderr is a TTY and NO_COLOR is unset or
/// empty (<https://no-color.org>). Files, pipes and the journal get plain text.
pub fn colours_wanted(stderr_is_tty: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_tty && no_color.is_none_or(OsStr::is_empty)
}

/// Install the global subscriber: RUST_LOG's filter, else `default_level`.
pub fn init(format: LogFormat, label: Option<String>, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR");
            let ansi = colours_wanted(std::io::stderr().is_terminal(), no_color.as_deref());
            let inner = tracing_subscriber::fmt::format().with_ansi(ansi);
            builder
                .with_ansi(ansi)
                .event_format(Labelled::new(label, false, inner))
                .init();
        }
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format().json();
            builder
                .json()
                .with_ansi(false)
                .event_format(Labelled::new(label, true, inner))
                .init();
        }
    }
}

/// An event format that puts the node's name on each line: `[NAME] ` before a text line,
/// a first `"node": NAME` member in a JSON object.
#[derive(Debug)]
struct Labelled<F> {
    /// `[NAME] ` or `"node":"NAME",` (JSON-escaped), ready to write.
    prefix: Option<String>,
    json: bool,
    inner: F,
}

impl<F> Labelled<F> {
    fn new(label: Option<String>, json: bool, inner: F) -> Self {
        let prefix = label.map(|l| match json {
            false => format!("[{l}] "),
            true => format!("\"node\":{},", serde_json::Value::String(l)),
        });
        Labelled {
            prefix,
            json,
            inner,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for Labelled<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(prefix) = &self.prefix else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            writer.write_str(prefix)?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON formatter writes one object: the label goes in as its first member.
        let rest = line.strip_prefix('{').ok_or(fmt::Error)?;
        writer.write_char('{')?;
        writer.write_str(prefix)?;
        writer.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        let set = Some(OsStr::new("1"));
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some(OsStr::new(""))), "empty: unset");
        assert!(!colours_wanted(true, set));
        assert!(!colours_wanted(false, None));
        assert!(!colours_wanted(false, set));
    }
}
