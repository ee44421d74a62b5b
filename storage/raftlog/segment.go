package raftlog

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
)

// segment is one segment file and the index of its records.
type segment struct {
	path string
	f    File
	base uint64 // index of the record at offs[0]
	seed uint32 // checksum seed (segHeader.seed)
	// offs[i] is the offset of the record of index base+i.
	offs     []uint32
	end      int64 // where the next record goes
	capacity int64 // the file's size, allocated
}

// next is the index the segment's next record must have.
func (g *segment) next() uint64 { return g.base + uint64(len(g.offs)) }

// span returns the offsets [from, to) of the record of index i.
func (g *segment) span(i uint64) (from, to int64) {
	k := i - g.base
	from = int64(g.offs[k])
	if k+1 < uint64(len(g.offs)) {
		return from, int64(g.offs[k+1])
	}
	return from, g.end
}

func segName(base uint64) string { return fmt.Sprintf("%020d.seg", base) }

// parseSegName returns the base index in a segment file's name.
func parseSegName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, ".seg")
	if !ok || len(s) != 20 {
		return 0, false
	}
	base, err := strconv.ParseUint(s, 10, 64)
	return base, err == nil && base > 0
}

// loadSegment opens the segment of base and indexes its records. The
// last segment (tail) may end in a torn write, which is cut off; anything
// else that fails its checks is corruption.
func loadSegment(fsys FS, logger *slog.Logger, dir string, base uint64, tail bool) (*segment, error) {
	path := filepath.Join(dir, segName(base))
	f, err := fsys.Open(path)
	if err != nil {
		return nil, err
	}
	g := &segment{path: path, f: f}
	fail := func(err error) (*segment, error) {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if g.capacity, err = f.Size(); err != nil {
		return fail(err)
	}
	r := &chunkReader{f: f, size: g.capacity}
	b, err := r.window(0, segHeaderLen)
	if err != nil {
		return fail(err)
	}
	h, err := decodeSegHeader(b)
	if err != nil {
		return fail(err)
	}
	if h.base != base {
		return fail(fmt.Errorf("%w: header says base index %d", ErrCorrupt, h.base))
	}
	g.base, g.seed = h.base, h.seed()
	off := int64(segHeaderLen)
	var bad error
	for {
		b, err := r.window(off, recHeaderLen)
		if err != nil {
			return fail(err)
		}
		if len(b) < recHeaderLen || isZero(b) {
			break
		}
		size := int64(binary.LittleEndian.Uint32(b[4:]))
		if b, err = r.window(off, int(min(recHeaderLen+size, g.capacity-off))); err != nil {
			return fail(err)
		}
		n, _, index, err := recordAt(b, g.seed)
		if err == nil && index != g.next() {
			err = fmt.Errorf("%w: record of index %d where %d belongs", ErrCorrupt, index, g.next())
		}
		if err != nil {
			bad = err
			break
		}
		g.offs = append(g.offs, uint32(off))
		off += int64(n)
	}
	g.end = off
	// Past the last good record the file must read as zeros (doc.go), but
	// for a torn write at the tail.
	nz, err := r.nextNonZero(off)
	if err != nil {
		return fail(err)
	}
	if nz < 0 {
		return g, nil
	}
	if bad == nil {
		bad = fmt.Errorf("%w: data after a zero record header", ErrCorrupt)
	}
	if !tail {
		return fail(fmt.Errorf("offset %d: %w", off, bad))
	}
	later, err := r.findBatchStart(off, g.next(), g.seed)
	if err != nil {
		return fail(err)
	}
	if later >= 0 {
		return fail(fmt.Errorf("offset %d: %w, and a later batch starts at offset %d", off, bad, later))
	}
	logger.Warn("cutting off a torn write at the end of the log", "file", path, "offset", off, "last_index", g.next()-1, "cause", bad)
	if err := cutTail(g); err != nil {
		return fail(fmt.Errorf("cut torn write: %w", err))
	}
	return g, nil
}

// cutTail drops what follows g.end in its file, then allocates the file
// back to its capacity, and syncs. When the disk has no room for that,
// the segment's capacity shrinks to its end and the next append starts a
// new segment.
func cutTail(g *segment) error {
	if err := g.f.Truncate(g.end); err != nil {
		return err
	}
	if g.capacity > g.end {
		if err := g.f.Allocate(g.end, g.capacity-g.end); err != nil {
			g.capacity = g.end
		}
	}
	return g.f.Sync()
}

// newSegment is a segment file prepared under its temporary name.
type newSegment struct {
	g   *segment
	tmp string
}

// prepareSegment creates the segment file of base under a temporary
// name, allocated to size, with its header synced. Failing, it leaves
// nothing behind and the store as it was: a full disk shows here, as
// ENOSPC.
func prepareSegment(fsys FS, dir string, base uint64, size int64) (*newSegment, error) {
	path := filepath.Join(dir, segName(base))
	tmp := path + ".tmp"
	h := segHeader{base: base, salt: rand.Uint64()}
	f, err := fsys.Create(tmp)
	if err != nil {
		return nil, fmt.Errorf("new segment: %w", err)
	}
	err = f.Allocate(0, size)
	if err == nil {
		_, err = f.WriteAt(h.encode(), 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		_ = fsys.Remove(tmp)
		return nil, fmt.Errorf("new segment %s: %w", path, err)
	}
	g := &segment{path: path, f: f, base: base, seed: h.seed(), end: segHeaderLen, capacity: size}
	return &newSegment{g: g, tmp: tmp}, nil
}

// abort removes a prepared segment that was not committed.
func (n *newSegment) abort(fsys FS) {
	if n.g != nil {
		n.g.f.Close()
		_ = fsys.Remove(n.tmp)
	}
}
