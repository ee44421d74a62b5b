package raftlog

import (
	"encoding/binary"
	"errors"
	"io"
)

// readChunk is how much a chunkReader reads at once.
const readChunk = 1 << 20

// chunkReader reads a file front to back in large reads, for Open.
type chunkReader struct {
	f    File
	size int64  // the file's size: nothing is read past it
	buf  []byte // the bytes of the file from off
	off  int64
}

// window returns the bytes [p, p+n) of the file, fewer at its end. The
// slice is valid until the next call.
func (r *chunkReader) window(p int64, n int) ([]byte, error) {
	if p >= r.size {
		return nil, nil
	}
	end := min(p+int64(n), r.size)
	if p >= r.off && end <= r.off+int64(len(r.buf)) {
		return r.buf[p-r.off : end-r.off], nil
	}
	m := min(max(end-p, readChunk), r.size-p)
	if int64(cap(r.buf)) < m {
		r.buf = make([]byte, m)
	}
	r.buf = r.buf[:m]
	r.off = p
	k, err := r.f.ReadAt(r.buf, p)
	if errors.Is(err, io.EOF) {
		// Shorter than it was when opened: read no further.
		r.size, err = p+int64(k), nil
		end = min(end, r.size)
	}
	if err != nil {
		r.buf = r.buf[:0]
		return nil, err
	}
	r.buf = r.buf[:k]
	return r.buf[:end-p], nil
}

// nextNonZero returns the offset of the first byte at or after p that is
// not zero, or -1.
func (r *chunkReader) nextNonZero(p int64) (int64, error) {
	for p < r.size {
		b, err := r.window(p, readChunk)
		if err != nil {
			return 0, err
		}
		if len(b) == 0 {
			break
		}
		if i := firstNonZero(b); i >= 0 {
			return p + int64(i), nil
		}
		p += int64(len(b))
	}
	return -1, nil
}

// findBatchStart returns the offset of the first record at or after p
// that starts a batch, holds an index from next on and passes its
// checksum, or -1. It looks at every offset that is not in a run of
// zeros, so it finds such a record even inside garbage.
func (r *chunkReader) findBatchStart(p int64, next uint64, seed uint32) (int64, error) {
	for p+recHeaderLen < r.size {
		nz, err := r.nextNonZero(p)
		if err != nil || nz < 0 {
			return -1, err
		}
		// A record at q has a non-zero byte in [q, q+8): its length.
		q := max(p, nz-recHeaderLen+1)
		p = q + 1
		b, err := r.window(q, recHeaderLen+1+binary.MaxVarintLen64)
		if err != nil {
			return -1, err
		}
		if len(b) <= recHeaderLen {
			continue
		}
		size := int64(binary.LittleEndian.Uint32(b[4:]))
		flags := b[recHeaderLen]
		if size == 0 || size > maxPayload || q+recHeaderLen+size > r.size ||
			flags&flagBatchStart == 0 || flags&^knownFlags != 0 {
			continue
		}
		index, n := binary.Uvarint(b[recHeaderLen+1:])
		if n <= 0 || index < next || index-next > uint64(r.size) {
			continue
		}
		if b, err = r.window(q, int(recHeaderLen+size)); err != nil {
			return -1, err
		}
		if _, _, _, err := recordAt(b, seed); err == nil {
			return q, nil
		}
	}
	return -1, nil
}

func isZero(b []byte) bool { return firstNonZero(b) < 0 }

// firstNonZero returns the index of the first byte of b that is not zero,
// or -1.
func firstNonZero(b []byte) int {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != 0 {
			break
		}
	}
	for ; i < len(b); i++ {
		if b[i] != 0 {
			return i
		}
	}
	return -1
}
