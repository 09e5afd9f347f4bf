//! The method kinds' refusals that need no inputs: settings a method does not define are
//! errors naming the param, before anything is loaded.

mod data_common;

use data_common::run;
use spo_core::Value;
use spo_stages::gradspo::GradSpoTrain;

#[test]
fn gradspo_refuses_mspo_chains_naming_the_param() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = run(&GradSpoTrain, &[("j", Value::Int(2))], vec![], dir.path());
    let e = r.expect_err("GradSPO with j = 2").to_string();
    assert!(
        e.contains("param `j`") && e.contains("defined for j = 1 (SPO), not j = 2"),
        "{e}"
    );
}
