package storage

import (
	"os"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/kvstore/kvstore/storage/diskspace"
)

// Sizing is how large the stores' files are. Badger creates its memtable
// logs at twice the memtable size and its value log files at twice the
// value log file size, sparse, the raft log allocates its segments whole,
// and the disk guard reserves them all (diskspace), so on a small
// filesystem they must be small.
type Sizing struct {
	StateMemTable, StateValueLog int64
	// RaftSegment is the size the raft log's segments are allocated to
	// (storage/raftlog).
	RaftSegment int64
	// BlockCache and IndexCache bound the state database's caches of
	// table blocks and indexes: memory it holds once reads have filled
	// them.
	BlockCache, IndexCache int64
}

// DefaultSizing is for filesystems of fullSizeFS and more: 16 MiB state
// memtables (each a preallocated arena, so most of the resident memory),
// 64 MiB value log files, which value log GC reclaims in steps of that
// size, and 64 MiB raft log segments.
var DefaultSizing = Sizing{
	StateMemTable: 16 << 20,
	StateValueLog: 64 << 20,
	RaftSegment:   64 << 20,
	BlockCache:    32 << 20,
	IndexCache:    16 << 20,
}

// fullSizeFS is the smallest filesystem that gets DefaultSizing: its files
// then take about 300 MiB at rest and the hard margin as much again, 15%
// of it.
const fullSizeFS = 4 << 30

// SizingFor scales DefaultSizing down for a filesystem of total bytes
// smaller than 4 GiB, in proportion, never below 1 MiB (Badger's least
// value log file), and keeps each value log file above the largest value
// it must hold: Badger refuses a value larger than its value log file.
// (The raft log gives a batch larger than a segment a segment of its own.)
func SizingFor(total uint64, maxValue int64) Sizing {
	scale := func(n int64) int64 {
		if total >= fullSizeFS {
			return n
		}
		return max(int64(float64(n)*float64(total)/fullSizeFS), 1<<20)
	}
	return Sizing{
		StateMemTable: scale(DefaultSizing.StateMemTable),
		StateValueLog: max(scale(DefaultSizing.StateValueLog), maxValue+entryOverhead),
		RaftSegment:   scale(DefaultSizing.RaftSegment),
		BlockCache:    DefaultSizing.BlockCache,
		IndexCache:    DefaultSizing.IndexCache,
	}
}

// entryOverhead is room for one value's key and encoding besides it.
const entryOverhead = 64 << 10

// GroupShare is the part of a node's Sizing each data group replica's
// stores get (ForDataGroup): a node hosts up to ranges.MaxGroupsPerNode
// of them beside the meta group, and each reserves its files on disk and
// fills its caches apart, so the full sizes would make disk and memory
// grow by the node's whole sizing with every group.
const GroupShare = 8

// ForDataGroup is the sizing of one data group replica's stores: z divided
// by GroupShare, never below 1 MiB a file (1 MiB a cache), and with value
// log files above the largest value, as SizingFor keeps them.
func (z Sizing) ForDataGroup(maxValue int64) Sizing {
	z = z.orDefault()
	share := func(n int64) int64 { return max(n/GroupShare, 1<<20) }
	return Sizing{
		StateMemTable: share(z.StateMemTable),
		StateValueLog: max(share(z.StateValueLog), maxValue+entryOverhead),
		RaftSegment:   share(z.RaftSegment),
		BlockCache:    share(z.BlockCache),
		IndexCache:    share(z.IndexCache),
	}
}

// orDefault fills the zero fields of z from DefaultSizing.
func (z Sizing) orDefault() Sizing {
	d := DefaultSizing
	pick := func(v, def int64) int64 {
		if v > 0 {
			return v
		}
		return def
	}
	return Sizing{
		StateMemTable: pick(z.StateMemTable, d.StateMemTable),
		StateValueLog: pick(z.StateValueLog, d.StateValueLog),
		RaftSegment:   pick(z.RaftSegment, d.RaftSegment),
		BlockCache:    pick(z.BlockCache, d.BlockCache),
		IndexCache:    pick(z.IndexCache, d.IndexCache),
	}
}

// Options are what the stores take besides their directory.
type Options struct {
	// Sizing of the Badger files; zero fields take DefaultSizing.
	Sizing Sizing
	// Guard, when set, is told what each store may write without asking
	// (its reserve), reserves the holes of its Badger files, and refuses
	// raft log appends below its hard margin.
	Guard *diskspace.Guard
}

// OpenSpace is the free space a store in dir must have to open: Badger
// writes at once, through memory maps, the tables of the memtables a
// crash or stop left (one of up to memTable bytes each). The new memtable
// log and value log file it creates at every open are sparse: they are
// promises the disk guard counts, written only as appends come, which the
// guard admits.
func OpenSpace(dir string, memTable int64) uint64 {
	mems := int64(0)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if _, ok := fileID(e.Name(), memFileExt); ok {
			mems++
		}
	}
	return uint64(mems * memTable)
}

// reserveOf is what a Badger database may write without asking: a new
// memtable log (twice the memtable size) while the full memtable waits
// for its flush, the table that flush writes (up to a memtable), a new
// value log file (twice its size, less what truncating the old one
// returns: about one file), and what its compactions write before they
// delete their inputs.
func reserveOf(db *badger.DB, opts badger.Options) uint64 {
	return uint64(3*opts.MemTableSize+opts.ValueLogFileSize) + compactionReserve(db.Levels(), opts)
}

// compactionReserve bounds what running compactions write before they
// delete the tables they merge. Badger merges either all of level 0 with
// the overlapping tables of the base level, or one table of a level with
// the tables it overlaps below (about LevelSizeMultiplier times its size);
// up to NumCompactors run at once. No compaction writes more than the
// whole tree.
func compactionReserve(levels []badger.LevelInfo, opts badger.Options) uint64 {
	var total, l0, base, table int64
	for i, l := range levels {
		total += l.Size
		switch {
		case l.Level == 0:
			l0 = l.Size
		case l.IsBaseLevel:
			base = l.Size
		}
		if l.Level > 0 && i < len(levels)-1 && l.NumTables > 0 {
			table = max(table, int64(1+opts.LevelSizeMultiplier)*l.TargetFileSize)
		}
	}
	one := max(l0+base, table)
	return uint64(min(total, int64(opts.NumCompactors)*one))
}
