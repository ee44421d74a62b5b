// Package raftlog is a raft log and stable store (hashicorp/raft's
// LogStore and StableStore) kept in segment files: each
// StoreLogs batch is one write and one fdatasync, an in-memory index maps
// each index to its record's offset, a prefix goes by deleting whole
// segments and a suffix by cutting the last one short. Cache puts a
// byte-bounded cache of recent entries in front of any raft.LogStore.
//
// This file is where the format, the durability rules and the recovery
// rules are stated; the code refers here.
//
// # Files
//
// A store is a directory holding:
//
//	LOCK                      flock'ed while a Store has the directory open
//	meta                      raft's stable keys and the log's first index
//	00000000000000000001.seg  segments, named by the index of their first
//	                          record (20 decimal digits)
//	*.tmp                     files being created; Open removes them
//
// # Segment format
//
// All integers are little-endian. A segment starts with a 64-byte header:
//
//	0   "KVRAFTLG"
//	8   version, uint32 (1)
//	12  zero, uint32
//	16  base: the index of the segment's first record, uint64
//	24  salt: random, uint64
//	32  CRC-32C of bytes 0-31, uint32
//	36  zeros to 64
//
// Records follow back to back from offset 64, one per entry:
//
//	crc     uint32  CRC-32C of length and payload, starting from the
//	                CRC-32C of the salt
//	length  uint32  of the payload, 1 to 256 MiB
//	payload flags byte: bit 0 the first record of a StoreLogs batch,
//	                    bit 1 AppendedAt present
//	        uvarint index, uvarint term, byte type,
//	        uvarint length + data, uvarint length + extensions,
//	        varint AppendedAt in Unix nanoseconds (when flagged)
//
// Seeding the checksum with the segment's salt means that neither a record
// left from another file nor an entry's data made to look like a record
// ever checks out.
//
// # Meta format
//
// Two slots of 4096 bytes, at offsets 0 and 4096, each:
//
//	crc     uint32  CRC-32C of length and payload
//	length  uint32
//	payload version byte (1), seq uint64, first uint64,
//	        uvarint count, count x (uvarint length + key,
//	        uvarint length + value)
//
// The current state is the valid slot with the higher seq. A change writes
// the next seq into the other slot and syncs it. first is an index below
// which no entry belongs to the log (0: none recorded).
//
// # Invariants
//
//  1. Segments are contiguous: each starts at the index after the last one
//     of the segment before it. Only the last segment (the tail) may hold
//     no record, and only the tail is written.
//  2. A segment's records hold the indexes from its base on, one after the
//     other.
//  3. Past its last record a segment reads as zeros: it is allocated zeroed
//     at creation, and every cut (a suffix delete, a torn or failed write)
//     truncates the file and allocates it again.
//  4. The log is [max(meta first, base of the first segment), the last
//     record of the tail], and empty when the segments hold no record at
//     or above meta first.
//  5. Readers see a record only after it is synced.
//
// # Durability
//
// When StoreLogs returns nil its entries are on disk: their records are
// written with one pwrite into space allocated beforehand and made durable
// with one fdatasync. A segment is created as a .tmp file, allocated to its
// full size (64 MiB by default; larger for a larger batch), given its
// header, synced, renamed and its directory synced, before any record goes
// into it. DeleteRange returns once its meta write, removals, truncation
// and directory sync are on disk; Set once its slot is synced.
//
// # Opening after a crash
//
// Open reads every record and checks its checksum and index, and then
// that the rest of the segment is zeros. What a crash can leave, and what
// Open does with it:
//
//   - A torn batch. Only the tail's last batch can be unsynced, and any
//     subset of its sectors may have reached the disk. Open stops at the
//     first record that fails its checks. If no record that starts a batch
//     (bit 0) and checks out follows it in the tail, the batch was torn:
//     the tail is cut after the last whole record. The records of the torn
//     batch before the cut were never acknowledged; raft takes them as any
//     uncommitted entries.
//   - Corruption. If a record that starts a later batch follows the bad
//     one, the bad one had been synced before that batch was written: Open
//     fails with the file and offset. So it does for any bad record or
//     non-zero byte after the records of a segment other than the tail, a
//     bad segment header, or segments that do not follow each other. Bit rot
//     in the tail's last batch cannot be told from a torn write, and is cut.
//   - A segment being created: a .tmp file, which Open removes. A segment
//     renamed but never written is an empty tail.
//   - A prefix delete: the meta file's first index is written before the
//     segments wholly below it are removed, oldest first; Open removes any
//     such segment left.
//   - A suffix delete: the segments from the deleted index on are removed
//     newest first, then the segment holding the entry before it is cut.
//     Any crash in between leaves a prefix of the old log that holds every
//     entry before the deleted ones.
//   - A stable store write: a torn slot fails its checksum and the other
//     slot holds the state before the write.
//   - A start over after a gap (below): segments are removed oldest first;
//     what is left is a suffix of the old log, and raft's next append
//     starts over again.
//
// # Failures
//
// A failed write, fsync, rename, removal or directory sync makes every
// later StoreLogs, DeleteRange and Set fail until the store is reopened,
// and reopening reads what is on disk. After a failed fsync the kernel may
// drop the dirty pages and report later fsyncs as fine ("fsyncgate"), so
// carrying on could acknowledge entries the disk does not have. The tail is
// first cut back to its last synced record, so that a reopen in the same
// boot does not read from the page cache a batch the disk may not hold.
// Reads go on serving the entries acknowledged before. Options.OnFail hears
// of the failure at once, so that the owner stops raft before it votes or
// takes entries again (node does). raft panics when it cannot store its
// term: when that is the write that fails, the process ends, which is
// what must happen.
//
// Creating a segment that fails before its rename (no space for the
// allocation, say) changes nothing: StoreLogs returns the error and the
// next call tries again.
//
// # Full disk
//
// Records only ever go into allocated space, so a full disk shows as
// ENOSPC from creating a segment, never as a failed or partial append. The
// meta file is written whole when created, and later writes overwrite its
// blocks, which needs no new space on ext4 and XFS (not on copy-on-write
// file systems such as btrfs or ZFS). Nothing is memory-mapped: no SIGBUS.
//
// # Gaps
//
// An append past the next index (a gap) drops the log and starts it over
// at the appended index: raft appends past a gap only when a snapshot
// covers everything before it, after it installs or restores a snapshot
// past the log's end. An append at or below the last index is refused:
// raft deletes a conflicting suffix first.
//
// Neither Store nor Cache is a raft.MonotonicLogStore, and nothing in
// front of them may claim to be one. For such a store hashicorp/raft
// (v1.8.0) deletes the whole log after installing a snapshot, entries
// past the snapshot included, yet keeps its last log index: a follower
// whose log ran past the snapshot then accepts the next entries from its
// leader with a hole below them, and panics with "log not found" applying
// them (hashicorp/raft#697; TestSnapshotBelowLastKeepsLaterEntries).
// Without it raft deletes only a prefix up to the snapshot, and appends
// past a gap when the snapshot is past the log's end.
//
// # Stable keys
//
// Get of a missing key returns nil and no error, GetUint64 0 and no error:
// raft takes both as unset (it also accepts an error whose text is
// exactly "not found", and no other). Keys and values share one slot:
// about 4 KiB in all.
//
// # Locking
//
// writeMu serialises StoreLogs, DeleteRange and Set, which do their I/O
// under it. mu guards what readers see (the segments, their indexes, the
// bounds, the stable keys); writers take it only to publish. Readers hold
// it shared while they read a record, so that removing a segment (under mu)
// never closes a file a reader is reading.
package raftlog
