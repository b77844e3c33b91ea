//! Workflow metadata or DDOs from consumers and providers: parsing and
//! validation must answer every input with a workflow or an error, never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = insitu_runtime::workflow::Workflow::from_json(data);
});
