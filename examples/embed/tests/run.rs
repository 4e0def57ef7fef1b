//! Builds and runs the example application, and checks what it prints: the plugin it ships
//! runs trusted and reaches the application's `db` service.

use std::process::Command;

#[test]
fn the_embedding_app_serves_its_plugin_through_its_own_service() {
    let output = Command::new(env!("CARGO_BIN_EXE_plugd-embed-example"))
        .env_remove("PLUGD_SDK")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        output.status.success(),
        "exit {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        output.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "plugin `greeter`: running",
            "db: `greeter` looked up user 1",
            r#"greet 1: {"value":{"message":"Hello, Ada!","visits":1}}"#,
            "db: `greeter` looked up user 2",
            r#"greet 2: {"value":{"message":"Hello, Grace!","visits":1}}"#,
            "db: `greeter` looked up user 1",
            r#"greet 1: {"value":{"message":"Hello, Ada!","visits":2}}"#,
            "greet 99 failed (not_found): No user with id 99",
        ],
        "--- stderr\n{stderr}"
    );
}
