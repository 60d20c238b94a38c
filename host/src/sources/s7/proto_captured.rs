// Frames printed by `tests/peers/s7_capture.py` (python-snap7 3.3 client ↔ server).
const CAPTURED_CR: &str = "0300001611e00000000100c1020100c2020101c0010a";
const CAPTURED_CC: &str = "0300001611d00001000100c0010ac1020100c2020101";
const CAPTURED_SETUP_REF: u16 = 1;
const CAPTURED_SETUP_REQUEST: &str = "0300001902f08032010000000100080000f0000001000101e0";
const CAPTURED_SETUP_RESPONSE: &str = "0300001b02f080320300000001000800000000f0000001000101e0";
const CAPTURED_READ_REF: u16 = 3;
const CAPTURED_READ_REQUEST: &str = "0300004302f080320100000003003200000404\
    120a10020002000083000010\
    120a10020004000184000000\
    120a10020003000184000050\
    120a10020002006384000000";
const CAPTURED_READ_RESPONSE: &str = "0300002f02f0803203000000030002001a00000404\
    ff040010a2a3\
    ff04002010111213\
    ff0400181a1b1c00\
    0a000000";

/// MB2..3, DB1.DBB0..3, DB1.DBB10..12 (odd: padded), DB99 (not there).
fn captured_items() -> Vec<ItemSpec> {
    vec![
        ItemSpec { area: 0x83, db: 0, start: 2, len: 2 },
        ItemSpec { area: 0x84, db: 1, start: 0, len: 4 },
        ItemSpec { area: 0x84, db: 1, start: 10, len: 3 },
        ItemSpec { area: 0x84, db: 99, start: 0, len: 2 },
    ]
}

fn captured_read_values() -> Vec<Result<Vec<u8>, ItemError>> {
    vec![
        Ok(vec![0xA2, 0xA3]),
        Ok(vec![0x10, 0x11, 0x12, 0x13]),
        Ok(vec![0x1A, 0x1B, 0x1C]),
        Err(ItemError(0x0A)),
    ]
}
