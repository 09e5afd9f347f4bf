//! `dag`: the stage graph as text, Graphviz dot or Mermaid.

use std::fmt::Write;

use crate::config::Pipeline;

/// Output format of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

/// Renders the stage graph of `pipe`, each stage with its kind and the sweeps over it.
pub fn render(pipe: &Pipeline, format: DagFormat) -> String {
    let sweeps = |stage: &str| -> Vec<String> {
        pipe.sweeps
            .iter()
            .filter(|s| s.stage == stage)
            .map(|s| format!("{} ({} cells)", s.name, s.cells.len()))
            .collect()
    };
    let mut s = String::new();
    match format {
        DagFormat::Text => {
            for st in &pipe.stages {
                let sw = sweeps(&st.name);
                let _ = write!(s, "{} ({})", st.name, st.kind);
                if !st.needs.is_empty() {
                    let _ = write!(s, " <- {}", st.needs.join(", "));
                }
                if !sw.is_empty() {
                    let _ = write!(s, "  swept by {}", sw.join(", "));
                }
                s.push('\n');
            }
        }
        DagFormat::Dot => {
            s.push_str("digraph pipeline {\n  rankdir=LR;\n  node [shape=box];\n");
            for st in &pipe.stages {
                let sw = sweeps(&st.name);
                let extra = if sw.is_empty() {
                    String::new()
                } else {
                    format!("\\nswept by {}", sw.join(", "))
                };
                let _ = writeln!(
                    s,
                    "  \"{}\" [label=\"{}\\n({}){extra}\"];",
                    st.name, st.name, st.kind
                );
                for n in &st.needs {
                    let _ = writeln!(s, "  \"{n}\" -> \"{}\";", st.name);
                }
            }
            s.push_str("}\n");
        }
        DagFormat::Mermaid => {
            s.push_str("flowchart LR\n");
            let id = |n: &str| n.replace('-', "_");
            for st in &pipe.stages {
                let sw = sweeps(&st.name);
                let extra = if sw.is_empty() {
                    String::new()
                } else {
                    format!("<br/>swept by {}", sw.join(", "))
                };
                let _ = writeln!(
                    s,
                    "  {}[\"{}<br/>({}){extra}\"]",
                    id(&st.name),
                    st.name,
                    st.kind
                );
                for n in &st.needs {
                    let _ = writeln!(s, "  {} --> {}", id(n), id(&st.name));
                }
            }
        }
    }
    s
}
