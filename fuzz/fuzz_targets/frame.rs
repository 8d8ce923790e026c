//! Bytes arriving on any port: the frame decoder must refuse or decode, never panic, and never
//! allocate what a length field claims before the bytes are there.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let mut input = data;
        while let Ok(Some(_frame)) = shoal_net::frame::read_frame(&mut input).await {}
    });
});
