//! Test helper: writes generated samples (`ferrule_tests::storage::batch`) through the Parquet
//! sink into the directory given as the first argument, batch after batch, until killed. The
//! storage test SIGKILLs it mid-write and checks what it left behind.

use ferrule::sinks::parquet::{ParquetSink, ParquetSinkConfig};
use ferrule::sinks::Sink;
use ferrule_tests::storage::{batch, tag_table};

const TAGS: u32 = 50;
const BATCH_ROWS: usize = 500;
/// Stop (and idle) after this many samples, well before the samples cross an hour boundary.
const MAX_SAMPLES: u64 = 1_000_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: storage_parquet_writer <dir>");
    let mut config = ParquetSinkConfig::new(dir);
    config.row_group_rows = 400;
    config.max_file_bytes = 24 * 1024;
    let mut sink = ParquetSink::open("warm", &config).expect("opening the sink");
    let tags = tag_table(TAGS);
    let mut first = 0;
    while first < MAX_SAMPLES {
        sink.write(&batch(first, BATCH_ROWS, &tags))
            .await
            .expect("writing");
        first += BATCH_ROWS as u64;
    }
    // Keep the last file open (in progress) until killed.
    std::thread::sleep(std::time::Duration::from_secs(3600));
}
