//! Snapshot archives: no bytes make validation or decoding panic, and whatever validates decodes to a
//! snapshot that encodes to an archive reading back the same. (In the appliance a body is validated
//! only after its hash and signature check out; this asks the archive reader to hold on its own.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_pipeline::archive;

fuzz_target!(|data: &[u8]| {
    let mut body = archive::MAGIC.to_vec();
    body.extend_from_slice(data);
    let Ok(snapshot) = archive::decode(&body) else {
        return;
    };
    let again = archive::encode(&snapshot).expect("a decoded snapshot encodes");
    assert_eq!(
        archive::decode(&again).expect("an encoded snapshot decodes"),
        snapshot
    );
});
