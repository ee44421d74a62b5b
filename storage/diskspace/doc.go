// Package diskspace keeps a node from filling the filesystem of its data
// directory.
//
// Badger writes its memtable logs (.mem), value logs (.vlog), table files
// and discard stats through memory maps of files it creates sparse, at
// their full size, with ftruncate. A page of such a file that is first
// written when the filesystem has no block left faults with SIGBUS, which
// Go cannot recover from: the process dies, and dies again on every start,
// since opening Badger writes new files too. So space must be found before
// Badger writes, never after.
//
// A Guard measures, per data directory:
//
//	free = available blocks of the filesystem (statfs)
//	     - what sparse files in the data dir already promise
//	       (apparent size minus allocated blocks, summed)
//	     - what was charged since the last measure (writes accepted)
//
// and compares it with two margins:
//
//   - the hard margin: what the stores may write without asking (a new
//     memtable file while the full one is flushed to a table, a new value
//     log file, the tables a running compaction writes before it deletes
//     its inputs; each store adds its own reserve), plus a little for small
//     files. Below it the raft log refuses appends, and so the node writes
//     nothing more of its own accord.
//   - the soft margin: the hard one plus headroom for the writes already
//     accepted cluster-wide while the others hear of this node's shortage.
//     Below it the node refuses writes that add data (puts, transactions
//     that put, lease grants); deletes and compaction, which need little,
//     go on down to the hard margin.
//
// Levels change with hysteresis: a level is left only once free is a
// Hysteresis above the margin that entered it, so a node at the edge does
// not flap.
//
// It also reserves what Badger promises: every file with holes in a
// watched directory (the stores' Badger directories) is fallocated as soon
// as it appears (inotify on Linux) and at every measure, so the blocks are
// this node's and no other process on the filesystem can take them. A file
// is only ever allocated within its current size (FALLOC_FL_KEEP_SIZE), so
// no byte of its contents or length changes. Table files need nothing:
// Badger writes them whole when it creates them.
//
// What is left to chance: between Badger's creating a sparse file and the
// guard's fallocate (microseconds to a millisecond) the file's first pages
// are written unreserved; the margins hold that space free as long as no
// other process fills the filesystem in that instant.
package diskspace
