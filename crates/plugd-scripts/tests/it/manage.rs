//! Registering, versioning, templates and archives.

use plugd_scripts::meta::Overrides;
use plugd_scripts::template::parse_var;
use plugd_scripts::{AddRequest, ListFilter};
use plugd_store::AddMode;
use serde_json::{Map, Value, json};

use crate::{add, manager};

const V1: &str = "# /// script\n# [tool.plugd]\n# id = \"report\"\n# name = \"Report\"\n# category = \"reports\"\n# tags = [\"csv\"]\n# ///\nprint('v1')\n";
const V2: &str = "# /// script\n# [tool.plugd]\n# id = \"report\"\n# name = \"Report\"\n# category = \"reports\"\n# tags = [\"csv\"]\n# ///\nprint('v2')\n";

#[tokio::test]
async fn versions_diff_rollback_and_listing() {
    let (scripts, _dir) = manager().await;
    let added = scripts
        .add(
            AddRequest {
                source: V1.into(),
                ..AddRequest::default()
            },
            AddMode::Create,
        )
        .await
        .unwrap();
    assert_eq!((added.script.id.as_str(), added.version), ("report", 1));
    let edit = |source: &str| AddRequest {
        id: Some("report".into()),
        source: source.into(),
        ..AddRequest::default()
    };
    let v2 = scripts.add(edit(V2), AddMode::Edit).await.unwrap();
    assert_eq!((v2.version, v2.created), (2, true));
    // The same content is not a new version.
    let again = scripts.add(edit(V2), AddMode::Edit).await.unwrap();
    assert_eq!((again.version, again.created), (2, false));
    let diff = scripts.diff("report", 1, 2).await.unwrap();
    assert!(diff.contains("--- report v1\n+++ report v2\n"), "{diff}");
    assert!(diff.contains("-print('v1')\n+print('v2')\n"), "{diff}");
    let back = scripts.rollback("report", 1).await.unwrap();
    assert_eq!((back.current, back.latest), (1, 2));
    assert_eq!(
        scripts
            .version("report", None)
            .await
            .unwrap()
            .source
            .unwrap(),
        V1
    );
    // Permissions changed alone make a version too.
    let perms = scripts
        .set_meta(
            "report",
            &Overrides {
                allowed_imports: Some(vec!["csv".into()]),
                ..Overrides::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(perms.version, 3);
    let versions = scripts.versions("report").await.unwrap();
    assert_eq!(versions.len(), 3);
    assert!(versions[2].current);
    assert!(
        scripts
            .diff("report", 1, 3)
            .await
            .unwrap()
            .contains("allowed_imports")
    );
    assert!(perms.script.meta.overrides.allowed_imports.is_some());
    // An operator's override stays with the script when its source changes: the next source
    // that imports outside it is refused.
    let err = scripts
        .add(edit("import socket\n"), AddMode::Edit)
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_script", "{err:?}");
    let v4 = scripts
        .add(edit("import csv\n"), AddMode::Edit)
        .await
        .unwrap();
    assert_eq!(
        v4.script.meta.permissions.allowed_imports,
        Some(vec!["csv".to_owned()])
    );
    scripts.rollback("report", 3).await.unwrap();

    add(&scripts, "other", "# /// script\n# [tool.plugd]\n# tags = [\"misc\"]\n# description = \"Something else\"\n# ///\npass\n").await;
    let by_tag = scripts
        .list(&ListFilter {
            tag: Some("csv".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_tag.len(), 1);
    let by_search = scripts
        .list(&ListFilter {
            search: Some("SOMETHING".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_search[0].id, "other");
    scripts.remove("other").await.unwrap();
    assert_eq!(scripts.remove("other").await.unwrap_err().code, "not_found");
    // A second script with a taken id is refused.
    let err = scripts
        .add(
            AddRequest {
                source: V1.into(),
                ..AddRequest::default()
            },
            AddMode::Create,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "conflict");
}

#[tokio::test]
async fn a_script_failing_its_checks_is_not_stored() {
    let (scripts, _dir) = manager().await;
    let err = scripts
        .add(
            AddRequest {
                id: Some("net".into()),
                source: "# /// script\n# [tool.plugd]\n# allowed_imports = [\"json\"]\n# ///\nimport socket\nopen('/etc/passwd')\n".into(),
                ..AddRequest::default()
            },
            AddMode::Create,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_script");
    assert_eq!(err.problems.len(), 2, "{err:?}");
    assert!(
        err.message.contains("5:8: Import of `socket`"),
        "{}",
        err.message
    );
    assert!(
        scripts
            .list(&ListFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let no_id = scripts
        .add(
            AddRequest {
                source: "pass\n".into(),
                ..AddRequest::default()
            },
            AddMode::Create,
        )
        .await
        .unwrap_err();
    assert!(no_id.message.contains("--id"), "{}", no_id.message);
}

#[tokio::test]
async fn templates_make_scripts_and_refuse_bad_values_all_at_once() {
    let (scripts, _dir) = manager().await;
    let vars = vec![
        parse_var("input_format:enum(csv|json):required").unwrap(),
        parse_var("limit:int=10").unwrap(),
    ];
    scripts
        .add_template(
            "reader",
            "Reads a file",
            "FORMAT = '{{ input_format }}'\nLIMIT = {{ limit }}\nprint(FORMAT, LIMIT)\n",
            vars.clone(),
            false,
        )
        .await
        .unwrap();
    let bad = scripts
        .add_template("broken", "", "{{ nope }}", vars.clone(), false)
        .await
        .unwrap_err();
    assert!(
        bad.message.contains("declares no variable `nope`"),
        "{}",
        bad.message
    );
    let values: Map<String, Value> = [("input_format".to_owned(), json!("csv"))]
        .into_iter()
        .collect();
    let made = scripts
        .instantiate("reader", "csv-reader", &values, Overrides::default())
        .await
        .unwrap();
    assert_eq!(made.script.id, "csv-reader");
    assert_eq!(
        scripts
            .version("csv-reader", None)
            .await
            .unwrap()
            .source
            .unwrap(),
        "FORMAT = 'csv'\nLIMIT = 10\nprint(FORMAT, LIMIT)\n"
    );
    let wrong: Map<String, Value> = [
        ("input_format".to_owned(), json!("xml")),
        ("limit".to_owned(), json!("lots")),
    ]
    .into_iter()
    .collect();
    let err = scripts
        .instantiate("reader", "x", &wrong, Overrides::default())
        .await
        .unwrap_err();
    assert_eq!(err.details.len(), 2, "{err:?}");
    assert_eq!(scripts.templates().await.unwrap().len(), 1);
}

#[tokio::test]
async fn export_and_import_round_trip_and_signatures_are_checked() {
    let (scripts, dir) = manager().await;
    add(&scripts, "report", V1).await;
    scripts
        .add(
            AddRequest {
                id: Some("report".into()),
                source: V2.into(),
                ..AddRequest::default()
            },
            AddMode::Edit,
        )
        .await
        .unwrap();
    scripts.rollback("report", 1).await.unwrap();
    let bytes = scripts
        .export(&["report".into()], true, None)
        .await
        .unwrap();

    let (other, _other_dir) = manager().await;
    let report = other.import(&bytes, false).await.unwrap();
    assert_eq!(report.scripts[0].versions_added, 2);
    assert_eq!(report.scripts[0].current, 1);
    assert_eq!(other.versions("report").await.unwrap().len(), 2);
    assert_eq!(
        other.version("report", Some(2)).await.unwrap().digest,
        scripts.version("report", Some(2)).await.unwrap().digest
    );
    // A lock smuggling an option (uv would read a file or build a project as the host) is
    // refused with the whole archive.
    let meta = scripts.version("report", Some(1)).await.unwrap();
    let meta_json = serde_json::to_value(&meta.meta).unwrap();
    let evil = plugd_scripts::archive::write(
        &[(
            "evil".to_owned(),
            meta.digest.clone(),
            vec![plugd_scripts::archive::VersionFiles {
                version: 1,
                digest: &meta.digest,
                meta: &meta_json,
                source: V1,
                lock: Some("-r /etc/shadow\n"),
            }],
        )],
        None,
    )
    .unwrap();
    let err = other.import(&evil, false).await.unwrap_err();
    assert!(
        err.message.contains("option line `-r /etc/shadow`"),
        "{}",
        err.message
    );
    assert_eq!(other.show("evil").await.unwrap_err().code, "not_found");
    // Importing again adds nothing.
    assert_eq!(
        other.import(&bytes, false).await.unwrap().scripts[0].versions_added,
        0
    );
    // Unsigned archives are refused where signatures are required.
    assert_eq!(
        other.import(&bytes, true).await.unwrap_err().code,
        "untrusted"
    );

    // Signed with a key the importer trusts: accepted and named; with one it does not: refused.
    let key = plugd_trust::SecretKey::generate();
    let signed = scripts.export(&[], false, Some(&key)).await.unwrap();
    let (trusting, trusting_dir) = manager().await;
    let trust = plugd_trust::TrustStore::open(&trusting_dir.path().join("trust")).unwrap();
    trust.add_key(&key.public_key()).unwrap();
    let _ = &dir;
    let report = trusting.import(&signed, true).await.unwrap();
    assert_eq!(report.signed_by, Some(key.key_id().to_string()));
    let (stranger, _s) = manager().await;
    let err = stranger.import(&signed, false).await.unwrap_err();
    assert_eq!(err.code, "untrusted");
    assert!(
        err.message.contains("not in the trust store"),
        "{}",
        err.message
    );
}
