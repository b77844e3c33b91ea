//! `cfg(insitu_real_cluster)` when `INSITU_TEST_KUBECONFIG` is set, so the
//! real-cluster test runs then and is reported as ignored (not run) otherwise.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(insitu_real_cluster)");
    println!("cargo::rerun-if-env-changed=INSITU_TEST_KUBECONFIG");
    if std::env::var_os("INSITU_TEST_KUBECONFIG").is_some() {
        println!("cargo::rustc-cfg=insitu_real_cluster");
    }
}
