//! Static validation of a script before anything runs: a real Python parser (RustPython's)
//! reports syntax errors with line:column, imports outside `allowed_imports`, and literal
//! absolute paths passed to calls that lie outside what the script may reach.
//!
//! This is a review aid, not the boundary: a dynamic import (`__import__(name)`) or a computed
//! path is invisible here. What such code can do is bounded by the kernel sandbox the run is in
//! (no network, read-only system paths, no other files); static checks only catch honest
//! mistakes early, with a position.

use std::path::{Path, PathBuf};

use rustpython_ast::{self as ast, Ranged, Visitor};
use rustpython_parser::Parse;
use serde::Serialize;

use crate::meta::Meta;

/// How bad a problem is: errors stop a run, warnings are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The script is refused.
    Error,
    /// Worth a look; nothing is refused.
    Warning,
}

/// One finding, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `syntax`, `import`, `dynamic_import` or `path`.
    pub kind: &'static str,
    /// Whether it stops a run.
    pub severity: Severity,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong, with the fix where known.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Modules every script may import whatever its `allowed_imports` say: the SDK and compiler
/// directives.
const ALWAYS_ALLOWED: &[&str] = &["plugd", "__future__"];

/// Checks `source` against `meta`; `reachable` are the paths a run can read besides those the
/// metadata grants (the interpreter's system paths). Problems come in source order.
pub fn check(source: &str, meta: &Meta, reachable: &[PathBuf]) -> Vec<Problem> {
    // The AST is built, walked and dropped recursively: a statement of thousands of operators
    // (`x = 0+1+1+...`) would overflow a stack. Such a statement is refused before parsing (as
    // CPython refuses it), and the rest runs on a thread with a stack of its own.
    if let Some((line, count)) = densest_statement(source)
        && count > MAX_OPERATORS
    {
        return vec![Problem {
            kind: "syntax",
            severity: Severity::Error,
            line,
            column: 1,
            message: format!(
                "The statement has {count} operators and brackets, more than the {MAX_OPERATORS} plugd parses; hint: split the expression"
            ),
        }];
    }
    let (source, meta, reachable) = (source.to_owned(), meta.clone(), reachable.to_vec());
    std::thread::Builder::new()
        .name("plugd-script-check".into())
        .stack_size(CHECK_STACK)
        .spawn(move || check_here(&source, &meta, &reachable))
        .and_then(|t| {
            t.join()
                .map_err(|_| std::io::Error::other("the check panicked"))
        })
        .unwrap_or_else(|e| {
            vec![Problem {
                kind: "syntax",
                severity: Severity::Error,
                line: 1,
                column: 1,
                message: format!("The script cannot be checked: {e}"),
            }]
        })
}

/// Most operators and brackets one statement may have.
const MAX_OPERATORS: usize = 1000;
/// The checking thread's stack: ample for [`MAX_OPERATORS`] levels.
const CHECK_STACK: usize = 64 << 20;

/// The statement with the most operator and bracket characters, outside strings and comments:
/// `(line, count)`. A rough count (a `==` counts twice), enough to bound the AST's depth.
fn densest_statement(source: &str) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    let (mut count, mut depth, mut line, mut start_line) = (0usize, 0usize, 1usize, 1usize);
    let mut chars = source.chars().peekable();
    let mut quote: Option<(char, bool)> = None;
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        if let Some((q, triple)) = quote {
            if c == '\\' {
                if chars.next() == Some('\n') {
                    line += 1;
                }
            } else if c == q {
                if !triple {
                    quote = None;
                } else if chars.peek() == Some(&q) {
                    chars.next();
                    if chars.peek() == Some(&q) {
                        chars.next();
                        quote = None;
                    }
                }
            } else if c == '\n' && !triple {
                quote = None;
            }
            continue;
        }
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
                if depth == 0 {
                    count = 0;
                    start_line = line;
                }
            }
            '\'' | '"' => {
                let triple = chars.peek() == Some(&c) && {
                    let mut ahead = chars.clone();
                    ahead.next();
                    ahead.peek() == Some(&c)
                };
                if triple {
                    chars.next();
                    chars.next();
                }
                quote = Some((c, triple));
            }
            '\n' | ';' if depth == 0 => {
                count = 0;
                start_line = line;
            }
            '(' | '[' | '{' => {
                depth += 1;
                count += 1;
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '+' | '-' | '*' | '/' | '%' | '@' | '&' | '|' | '^' | '~' | '<' | '>' | '=' | '!' => {
                count += 1;
            }
            _ => {}
        }
        if best.is_none_or(|(_, n)| count > n) {
            best = Some((start_line, count));
        }
    }
    best
}

fn check_here(source: &str, meta: &Meta, reachable: &[PathBuf]) -> Vec<Problem> {
    let lines = LineIndex::new(source);
    let suite = match ast::Suite::parse(source, "<script>") {
        Ok(suite) => suite,
        Err(e) => {
            let (line, column) = lines.position(u32::from(e.offset) as usize);
            return vec![Problem {
                kind: "syntax",
                severity: Severity::Error,
                line,
                column,
                message: format!("Syntax error: {}", e.error),
            }];
        }
    };
    let mut checker = Checker {
        meta,
        reachable,
        lines: &lines,
        problems: Vec::new(),
    };
    for stmt in suite {
        checker.visit_stmt(stmt);
    }
    checker.problems.sort_by_key(|p| (p.line, p.column, p.kind));
    checker.problems
}

struct Checker<'a> {
    meta: &'a Meta,
    reachable: &'a [PathBuf],
    lines: &'a LineIndex,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn push(&mut self, kind: &'static str, severity: Severity, at: usize, message: String) {
        let (line, column) = self.lines.position(at);
        self.problems.push(Problem {
            kind,
            severity,
            line,
            column,
            message,
        });
    }

    fn import(&mut self, module: &str, at: usize) {
        let Some(allowed) = &self.meta.permissions.allowed_imports else {
            return;
        };
        let top = module.split('.').next().unwrap_or(module);
        let ok = ALWAYS_ALLOWED.contains(&top)
            || allowed
                .iter()
                .any(|a| a == module || a == top || module.starts_with(&format!("{a}.")));
        if !ok {
            self.push(
                "import",
                Severity::Error,
                at,
                format!(
                    "Import of `{module}` is not in `allowed_imports` ({}); hint: add `{top}` to `allowed_imports` in its `[tool.plugd]` table (or `--allow-import {top}`)",
                    if allowed.is_empty() {
                        "empty".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
            );
        }
    }

    fn path_allowed(&self, path: &Path) -> bool {
        let p = &self.meta.permissions;
        p.read
            .iter()
            .chain(&p.write)
            .chain(self.reachable)
            .any(|root| path.starts_with(root))
            || path.starts_with("/tmp")
            || path.starts_with("/dev/null")
    }

    fn literal_path(&mut self, expr: &ast::Expr, at: usize) {
        let ast::Expr::Constant(c) = expr else {
            return;
        };
        let ast::Constant::Str(s) = &c.value else {
            return;
        };
        // An absolute path: `/x...`, no whitespace or newline (not a sentence or a regex).
        if !s.starts_with('/') || s.len() < 2 || s.contains(char::is_whitespace) {
            return;
        }
        let path = Path::new(s.as_str());
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
            || !self.path_allowed(path)
        {
            self.push(
                "path",
                Severity::Error,
                at,
                format!(
                    "Path `{s}` is outside `allowed_paths`; hint: add it (or a parent directory) to `allowed_paths.read` or `.write` in its `[tool.plugd]` table"
                ),
            );
        }
    }
}

fn start(range: &ast::text_size::TextRange) -> usize {
    u32::from(range.start()) as usize
}

impl Visitor for Checker<'_> {
    fn visit_stmt_import(&mut self, node: ast::StmtImport) {
        for alias in &node.names {
            self.import(alias.name.as_str(), start(&alias.range));
        }
    }

    fn visit_stmt_import_from(&mut self, node: ast::StmtImportFrom) {
        // `from . import x` is relative to the script's own directory: nothing to check.
        if node.level.is_some_and(|l| l.to_u32() > 0) {
            return;
        }
        if let Some(module) = &node.module {
            self.import(module.as_str(), start(&node.range));
        }
    }

    fn visit_expr_call(&mut self, node: ast::ExprCall) {
        let at = start(&node.range);
        // `__import__("x")`, `importlib.import_module("x")`: checked when literal.
        let dynamic = match node.func.as_ref() {
            ast::Expr::Name(n) => n.id.as_str() == "__import__",
            ast::Expr::Attribute(a) => a.attr.as_str() == "import_module",
            _ => false,
        };
        if dynamic {
            match node.args.first() {
                Some(ast::Expr::Constant(ast::ExprConstant {
                    value: ast::Constant::Str(module),
                    ..
                })) => {
                    let module = module.clone();
                    self.import(&module, at);
                }
                _ if self.meta.permissions.allowed_imports.is_some() => self.push(
                    "dynamic_import",
                    Severity::Warning,
                    at,
                    "A dynamic import of a computed name cannot be checked against `allowed_imports`; the kernel sandbox still confines what the module can do".into(),
                ),
                _ => {}
            }
        }
        for arg in &node.args {
            let at = start(&arg.range());
            self.literal_path(arg, at);
        }
        for keyword in &node.keywords {
            let at = start(&keyword.value.range());
            self.literal_path(&keyword.value, at);
        }
        self.generic_visit_expr_call(node);
    }
}

/// Byte offset → 1-based line and column (in characters).
struct LineIndex {
    starts: Vec<usize>,
    text: String,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex {
            starts,
            text: text.to_owned(),
        }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let begin = self.starts[line - 1];
        let column = self
            .text
            .get(begin..offset)
            .map_or(offset - begin, |s| s.chars().count())
            + 1;
        (line, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::describe;

    fn problems(source: &str) -> Vec<String> {
        let meta = describe(source).unwrap().meta;
        check(source, &meta, &[PathBuf::from("/usr")])
            .iter()
            .map(|p| format!("{} {p}", p.kind))
            .collect()
    }

    #[test]
    fn a_syntax_error_has_its_line_and_column() {
        assert_eq!(
            problems("x = 1\ndef f(:\n    pass\n"),
            ["syntax 2:7: Syntax error: invalid syntax. Got unexpected token ':'"]
        );
    }

    #[test]
    fn imports_outside_the_allow_list_are_named() {
        let src = "# /// script\n# [tool.plugd]\n# allowed_imports = [\"json\", \"os\"]\n# ///\nimport json, os.path\nimport socket\nfrom urllib.request import urlopen\nfrom plugd import script\nfrom . import sibling\nm = __import__('ctypes')\nimportlib.import_module(name)\n";
        let found = problems(src);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found[0].starts_with("import 6:8: Import of `socket`"),
            "{found:?}"
        );
        assert!(found[1].starts_with("import 7:1: Import of `urllib.request`"));
        assert!(found[2].starts_with("import 10:5: Import of `ctypes`"));
        assert!(found[3].starts_with("dynamic_import 11:1"));
    }

    #[test]
    fn without_an_allow_list_any_import_is_fine() {
        assert!(problems("import socket\n").is_empty());
    }

    #[test]
    fn literal_paths_outside_allowed_paths_are_named() {
        let src = "# /// script\n# [tool.plugd]\n# allowed_paths = { read = [\"/srv/in\"] }\n# ///\nopen('/srv/in/a.csv')\nopen('/etc/shadow')\nPath(p='/srv/in/../../etc/passwd')\nopen('/usr/share/dict/words')\nprint('/ not a path')\nopen('/tmp/x', 'w')\n";
        let found = problems(src);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("path 6:6: Path `/etc/shadow`"),
            "{found:?}"
        );
        assert!(found[1].starts_with("path 7:8:"), "{found:?}");
    }

    #[test]
    fn a_statement_too_deep_to_parse_is_refused_without_crashing() {
        let chain = format!("x = 0{}\n", "+1".repeat(20_000));
        let found = problems(&chain);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("20001 operators") || found[0].contains("operators and brackets"),
            "{found:?}"
        );
        let unary = format!("x = {}1\n", "-".repeat(10_000));
        assert!(problems(&unary)[0].contains("split the expression"));
        // Operators inside strings and comments do not count; 900 levels parse on the thread.
        let fine = format!(
            "s = '{}'  # {}\nx = 0{}\n",
            "+".repeat(5000),
            "-".repeat(5000),
            "+1".repeat(900)
        );
        assert!(problems(&fine).is_empty(), "{:?}", problems(&fine));
        assert_eq!(densest_statement("a = (1 +\n 2)\nb = 1\n"), Some((1, 3)));
    }

    #[test]
    fn columns_count_characters() {
        let index = LineIndex::new("é = 1\nab");
        assert_eq!(index.position(0), (1, 1));
        assert_eq!(index.position(2), (1, 2));
        assert_eq!(index.position(7), (2, 1));
    }
}
