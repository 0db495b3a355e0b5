"""Hypothesis fuzz suite: decoders and recovery paths that read bytes from peers or disks.

Targets (one module each):
    test_fuzz_frames.py      FrameDecoder, request and response mode: arbitrary bytes in arbitrary
                             chunks, valid streams with mutated bytes, length prefixes near limits
    test_fuzz_messages.py    decode_request / decode_response for every registered API:
                             near-valid controls (one node of a valid to_control() mutated) and
                             random payload bytes; only ProtocolError subclasses may escape
    test_fuzz_records.py     validate_batch / iter_batches / decode_records: mutated valid batches,
                             header fields and records sections rewritten with a recomputed CRC so
                             the deeper checks run; only InvalidBatchError may escape
    test_fuzz_storage.py     PartitionLog.open after an unclean stop and random damage to .log,
                             .index, .timeindex and partition.checkpoint: only StorageError may
                             escape, the reopened log is a prefix of what was written, appends
                             continue at log_end_offset
    test_fuzz_metadata.py    RaftStorage.load of a damaged Raft WAL and snapshot: never raises
                             on WAL damage, loads the state after a prefix of the records
    test_fuzz_regressions.py every crash the fuzzers found, as the smallest input; strict xfail
                             while the owner has not fixed it (a fix turns it into a failure: then
                             drop the marker)

Profiles (registered in tests/fuzz/conftest.py, applied only to these tests):
    ci    (default) a few hundred examples per target, derandomized, no example database;
          the whole suite stays under 40 s on 2 cores
    long  TIDELOG_FUZZ_PROFILE=long: 20 000 examples per cheap target (storage targets get a
          tenth: each example writes and fsyncs files), random seeds, failures saved in
          .hypothesis/ and replayed first on the next run

The long run:
    TIDELOG_FUZZ_PROFILE=long python -m pytest tests/fuzz -q -p no:cacheprovider
or bench/fuzz_long.sh, which also takes TIDELOG_FUZZ_MAX_EXAMPLES=N to scale every target
(e.g. a time-boxed run). A failure prints a `@reproduce_failure` blob and the falsifying example.
"""
