package ranges

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// formatVersion is the first byte of a marshalled table. A reader refuses
// any other: a node must not route by a table it half understands.
const formatVersion = 1

// ErrFormatVersion refuses a marshalled table of an unknown format.
var ErrFormatVersion = errors.New("unknown range table format version")

// Marshal encodes the table: the format version byte, then uvarints and
// length-prefixed byte strings, in field order (see appendTable).
func (t *Table) Marshal() []byte {
	return t.appendTable([]byte{formatVersion})
}

// appendTable: Version, NextGroup, NextTransfer; the groups (ID, Name,
// Epoch, Voters, NonVoters, Target with a presence byte); the spans
// (Start, End with a presence byte, Group); the transfers (ID, Kind,
// From, To, Frozen, Ranges).
func (t *Table) appendTable(b []byte) []byte {
	u := binary.AppendUvarint
	b = u(b, t.Version)
	b = u(b, uint64(t.NextGroup))
	b = u(b, t.NextTransfer)
	b = u(b, uint64(len(t.Groups)))
	for _, g := range t.Groups {
		b = u(b, uint64(g.ID))
		b = appendBytes(b, []byte(g.Name))
		b = u(b, g.Epoch)
		b = appendNodes(b, g.Voters)
		b = appendNodes(b, g.NonVoters)
		if g.Target == nil {
			b = append(b, 0)
		} else {
			b = appendNodes(append(b, 1), g.Target)
		}
	}
	b = u(b, uint64(len(t.Spans)))
	for _, s := range t.Spans {
		b = appendRange(b, KeyRange{s.Start, s.End})
		b = u(b, uint64(s.Group))
	}
	b = u(b, uint64(len(t.Transfers)))
	for _, tr := range t.Transfers {
		b = u(b, tr.ID)
		b = append(b, byte(tr.Kind))
		b = u(b, uint64(tr.From))
		b = u(b, uint64(tr.To))
		b = u(b, tr.Frozen)
		b = u(b, uint64(len(tr.Ranges)))
		for _, r := range tr.Ranges {
			b = appendRange(b, r)
		}
	}
	return b
}

func appendBytes(b, s []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendNodes(b []byte, ns []NodeID) []byte {
	b = binary.AppendUvarint(b, uint64(len(ns)))
	for _, n := range ns {
		b = appendBytes(b, []byte(n))
	}
	return b
}

func appendRange(b []byte, r KeyRange) []byte {
	b = appendBytes(b, r.Start)
	if r.End == nil {
		return append(b, 0)
	}
	return appendBytes(append(b, 1), r.End)
}

// Unmarshal decodes a table Marshal encoded and validates it.
func Unmarshal(data []byte) (*Table, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrInvalid)
	}
	if data[0] != formatVersion {
		return nil, fmt.Errorf("%w: %d (this node reads %d)", ErrFormatVersion, data[0], formatVersion)
	}
	d := decoder{b: data[1:]}
	t := &Table{Version: d.uint(), NextGroup: GroupID(d.uint()), NextTransfer: d.uint()}
	for i := d.count(); i > 0 && d.err == nil; i-- {
		g := Group{ID: GroupID(d.uint()), Name: string(d.bytes()), Epoch: d.uint(), Voters: d.nodes(), NonVoters: d.nodes()}
		switch d.byte() {
		case 0:
		case 1:
			g.Target = d.nodes()
			if g.Target == nil {
				g.Target = []NodeID{}
			}
		default:
			d.fail("target flag")
		}
		t.Groups = append(t.Groups, g)
	}
	for i := d.count(); i > 0 && d.err == nil; i-- {
		r := d.keyRange()
		t.Spans = append(t.Spans, Span{Start: r.Start, End: r.End, Group: GroupID(d.uint())})
	}
	for i := d.count(); i > 0 && d.err == nil; i-- {
		tr := Transfer{ID: d.uint(), Kind: TransferKind(d.byte()), From: GroupID(d.uint()), To: GroupID(d.uint()), Frozen: d.uint()}
		for j := d.count(); j > 0 && d.err == nil; j-- {
			tr.Ranges = append(tr.Ranges, d.keyRange())
		}
		t.Transfers = append(t.Transfers, tr)
	}
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: decode: %w", ErrInvalid, d.err)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// decoder reads what appendTable wrote; the first error sticks and every
// later read returns zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("truncated or malformed %s", what)
	}
}

func (d *decoder) uint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a count, bounded by the bytes left (every counted item
// takes at least one), so a forged count allocates nothing.
func (d *decoder) count() int {
	v := d.uint()
	if v > uint64(len(d.b)) || v > math.MaxInt32 {
		d.fail("count")
		return 0
	}
	return int(v)
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("byte")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) bytes() []byte {
	n := d.uint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail("byte string")
		return nil
	}
	s := append([]byte{}, d.b[:n]...)
	d.b = d.b[n:]
	return s
}

func (d *decoder) nodes() []NodeID {
	var ns []NodeID
	for i := d.count(); i > 0 && d.err == nil; i-- {
		ns = append(ns, NodeID(d.bytes()))
	}
	return ns
}

func (d *decoder) keyRange() KeyRange {
	r := KeyRange{Start: d.bytes()}
	switch d.byte() {
	case 0:
	case 1:
		r.End = d.bytes()
	default:
		d.fail("range end flag")
	}
	return r
}
