"""Independent Parquet reader for the crash harness (pyarrow): every published file
(`**/*.parquet`; in-progress files are hidden) under DIR, one line per distinct (tag, time):
"<tag> <time as ns since the epoch> <rows>".

usage: parquet_tally.py DIR
"""
import collections
import glob
import sys

import pyarrow.parquet as pq

counts = collections.Counter()
for f in glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True):
    t = pq.read_table(f, columns=["tag", "time"])
    tags = t.column("tag").to_pylist()
    times = t.column("time").cast("int64").to_pylist()
    counts.update(zip(tags, times))
out = [f"{tag} {ns} {n}" for (tag, ns), n in counts.items()]
if out:
    sys.stdout.write("\n".join(out) + "\n")
