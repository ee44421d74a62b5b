package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/hashicorp/raft"
)

// The formats of segment headers and records; doc.go describes them.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const (
	segMagic     = "KVRAFTLG"
	segVersion   = 1
	segHeaderLen = 64

	recHeaderLen = 8
	// maxPayload bounds one record's payload. Larger is corruption when
	// reading, and an error when storing.
	maxPayload = 1 << 28

	// Bits of a payload's flags byte.
	flagBatchStart    = 1 << 0 // the first record of a StoreLogs batch
	flagHasAppendedAt = 1 << 1
	knownFlags        = flagBatchStart | flagHasAppendedAt
)

// ErrCorrupt is wrapped by every error about bytes that fail their checks:
// Open fails with it when the log holds damage it may not cut (doc.go).
var ErrCorrupt = errors.New("raftlog: corrupt")

// segHeader is a segment file's first segHeaderLen bytes.
type segHeader struct {
	base uint64 // index of the segment's first record
	salt uint64 // random; seeds the segment's record checksums
}

func (h segHeader) encode() []byte {
	b := make([]byte, segHeaderLen)
	copy(b, segMagic)
	binary.LittleEndian.PutUint32(b[8:], segVersion)
	binary.LittleEndian.PutUint64(b[16:], h.base)
	binary.LittleEndian.PutUint64(b[24:], h.salt)
	binary.LittleEndian.PutUint32(b[32:], crc32.Checksum(b[:32], castagnoli))
	return b
}

func decodeSegHeader(b []byte) (segHeader, error) {
	if len(b) < segHeaderLen {
		return segHeader{}, fmt.Errorf("%w: segment header: %d bytes", ErrCorrupt, len(b))
	}
	if string(b[:8]) != segMagic {
		return segHeader{}, fmt.Errorf("%w: segment header: bad magic", ErrCorrupt)
	}
	if crc32.Checksum(b[:32], castagnoli) != binary.LittleEndian.Uint32(b[32:]) {
		return segHeader{}, fmt.Errorf("%w: segment header: checksum mismatch", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != segVersion {
		return segHeader{}, fmt.Errorf("segment format version %d, want %d", v, segVersion)
	}
	return segHeader{
		base: binary.LittleEndian.Uint64(b[16:]),
		salt: binary.LittleEndian.Uint64(b[24:]),
	}, nil
}

// seed is the checksum state a segment's records start from.
func (h segHeader) seed() uint32 {
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], h.salt)
	return crc32.Update(0, castagnoli, s[:])
}

// appendRecord appends l's record to b with its checksum left zero (see
// sealRecord), and returns b.
func appendRecord(b []byte, l *raft.Log, batchStart bool) ([]byte, error) {
	start := len(b)
	b = append(b, make([]byte, recHeaderLen)...)
	var flags byte
	if batchStart {
		flags |= flagBatchStart
	}
	if !l.AppendedAt.IsZero() {
		flags |= flagHasAppendedAt
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, l.Index)
	b = binary.AppendUvarint(b, l.Term)
	b = append(b, byte(l.Type))
	b = binary.AppendUvarint(b, uint64(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	if flags&flagHasAppendedAt != 0 {
		b = binary.AppendVarint(b, l.AppendedAt.UnixNano())
	}
	n := len(b) - start - recHeaderLen
	if n > maxPayload {
		return b[:start], fmt.Errorf("log %d: record of %d bytes exceeds %d", l.Index, n, maxPayload)
	}
	binary.LittleEndian.PutUint32(b[start+4:], uint32(n))
	return b, nil
}

// sealRecord sets the checksum of the record at the start of r.
func sealRecord(r []byte, seed uint32) {
	n := recHeaderLen + int(binary.LittleEndian.Uint32(r[4:]))
	binary.LittleEndian.PutUint32(r, crc32.Update(seed, castagnoli, r[4:n]))
}

// recordAt checks the record at the start of b: its length fits in b, its
// checksum matches. It returns the record's length and its payload's flags
// and index, without decoding the rest.
func recordAt(b []byte, seed uint32) (n int, flags byte, index uint64, err error) {
	if len(b) < recHeaderLen {
		return 0, 0, 0, fmt.Errorf("%w: record header cut short", ErrCorrupt)
	}
	size := binary.LittleEndian.Uint32(b[4:])
	if size == 0 || size > maxPayload {
		return 0, 0, 0, fmt.Errorf("%w: record length %d", ErrCorrupt, size)
	}
	if uint64(len(b)-recHeaderLen) < uint64(size) {
		return 0, 0, 0, fmt.Errorf("%w: record of %d bytes cut short", ErrCorrupt, size)
	}
	n = recHeaderLen + int(size)
	if crc32.Update(seed, castagnoli, b[4:n]) != binary.LittleEndian.Uint32(b) {
		return 0, 0, 0, fmt.Errorf("%w: record checksum mismatch", ErrCorrupt)
	}
	flags = b[recHeaderLen]
	index, m := binary.Uvarint(b[recHeaderLen+1 : n])
	if m <= 0 {
		return 0, 0, 0, fmt.Errorf("%w: record index", ErrCorrupt)
	}
	return n, flags, index, nil
}

// decodeRecord checks the record that is all of b and decodes it into l.
// l's Data and Extensions alias b. l is written only on success.
func decodeRecord(b []byte, seed uint32, l *raft.Log) error {
	n, _, _, err := recordAt(b, seed)
	if err != nil {
		return err
	}
	if n != len(b) {
		return fmt.Errorf("%w: record of %d bytes in a slot of %d", ErrCorrupt, n, len(b))
	}
	return decodePayload(b[recHeaderLen:], l)
}

// decodePayload decodes a record's payload into l. It never panics on
// bad input.
func decodePayload(p []byte, l *raft.Log) error {
	d := decoder{buf: p}
	flags := d.byte("flags")
	var out raft.Log
	out.Index = d.uvarint("index")
	out.Term = d.uvarint("term")
	out.Type = raft.LogType(d.byte("type"))
	out.Data = d.bytes("data")
	out.Extensions = d.bytes("extensions")
	if flags&flagHasAppendedAt != 0 {
		if ns := d.varint("appended at"); d.err == nil {
			out.AppendedAt = time.Unix(0, ns)
		}
	}
	if d.err != nil {
		return d.err
	}
	if flags&^knownFlags != 0 {
		return fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, flags)
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("%w: %d bytes after the fields", ErrCorrupt, len(d.buf))
	}
	*l = out
	return nil
}

// decoder consumes a buffer front to back; after the first error every
// read returns a zero value and err keeps that error.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) fail(field, why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s: %s", ErrCorrupt, field, why)
	}
}

func (d *decoder) byte(field string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) == 0 {
		d.fail(field, "cut short")
		return 0
	}
	v := d.buf[0]
	d.buf = d.buf[1:]
	return v
}

func (d *decoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail(field, "bad varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) varint(field string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.fail(field, "bad varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// bytes reads a length-prefixed byte string; nil for length 0.
func (d *decoder) bytes(field string) []byte {
	n := d.uvarint(field + " length")
	if d.err != nil || n == 0 {
		return nil
	}
	if n > uint64(len(d.buf)) {
		d.fail(field, fmt.Sprintf("length %d past the end", n))
		return nil
	}
	v := d.buf[:n:n]
	d.buf = d.buf[n:]
	return v
}
