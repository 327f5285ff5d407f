//! The one error type of the crate: every variant names the file, and the line where
//! there is one, so the CLI can print `file:line: what was expected`.

use std::fmt;

/// What is wrong with a workflow's span graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DagIssue {
    /// The span names a parent that is not in its workflow.
    Orphan {
        span_id: String,
        parent_span_id: String,
    },
    /// The span links to (also waited for) a span that is not in its workflow; counted
    /// with the orphans.
    MissingLink { span_id: String, link: String },
    /// A second span with an id already used in the same workflow.
    DuplicateSpan { span_id: String },
    /// Following parent links (or span links) from this span comes back to it.
    Cycle { span_id: String },
}

impl fmt::Display for DagIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DagIssue::Orphan {
                span_id,
                parent_span_id,
            } => write!(
                f,
                "orphan span `{span_id}`: parent `{parent_span_id}` is not in the workflow"
            ),
            DagIssue::MissingLink { span_id, link } => write!(
                f,
                "span `{span_id}` links to `{link}`, which is not in the workflow"
            ),
            DagIssue::DuplicateSpan { span_id } => write!(f, "duplicate span id `{span_id}`"),
            DagIssue::Cycle { span_id } => {
                write!(f, "cycle in parent or span links through span `{span_id}`")
            }
        }
    }
}

/// An error reading, parsing or interpreting a trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened or read (line 0: before the first line).
    #[error("{file}{}: cannot read: {source}", line_suffix(*line))]
    Io {
        file: String,
        line: u64,
        #[source]
        source: std::io::Error,
    },
    /// A row that does not parse: what was expected.
    #[error("{file}:{line}: {message}")]
    Row {
        file: String,
        line: u64,
        message: String,
    },
    /// A workflow whose span graph is broken (strict mode).
    #[error("{file}:{line}: workflow `{workflow}`: {issue}")]
    Dag {
        file: String,
        line: u64,
        workflow: String,
        issue: DagIssue,
    },
    /// A problem with the file as a whole (unknown format, bad option).
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

fn line_suffix(line: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

impl TraceError {
    pub(crate) fn row(file: &str, line: u64, message: impl Into<String>) -> Self {
        TraceError::Row {
            file: file.to_string(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn file(file: &str, message: impl Into<String>) -> Self {
        TraceError::File {
            file: file.to_string(),
            message: message.into(),
        }
    }

    /// The file the error is about.
    pub fn file_name(&self) -> &str {
        match self {
            TraceError::Io { file, .. }
            | TraceError::Row { file, .. }
            | TraceError::Dag { file, .. }
            | TraceError::File { file, .. } => file,
        }
    }

    /// The 1-based line, where the error is about one line.
    pub fn line(&self) -> Option<u64> {
        match self {
            TraceError::Io { line, .. } => (*line > 0).then_some(*line),
            TraceError::Row { line, .. } | TraceError::Dag { line, .. } => Some(*line),
            TraceError::File { .. } => None,
        }
    }

    /// `file` or `file:line`: where to look.
    pub fn location(&self) -> String {
        match self.line() {
            Some(l) => format!("{}:{l}", self.file_name()),
            None => self.file_name().to_string(),
        }
    }

    /// The message without the location.
    pub fn detail(&self) -> String {
        match self {
            TraceError::Io { source, .. } => format!("cannot read: {source}"),
            TraceError::Row { message, .. } | TraceError::File { message, .. } => message.clone(),
            TraceError::Dag {
                workflow, issue, ..
            } => format!("workflow `{workflow}`: {issue}"),
        }
    }
}
