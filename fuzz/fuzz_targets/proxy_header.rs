//! Arbitrary bytes as a PROXY protocol header (`accept_proxy`): the reader must consume at most the
//! header and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut r = data;
        let _ = setgate_proxy::proxy_proto::read_header(&mut r).await;
    });
});
