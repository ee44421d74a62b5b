package ranges

import (
	"bytes"
	"errors"
	"testing"
)

// busyTable has every kind of field: a target, non-voters, a span ending
// at +inf and pending transfers of both kinds.
func busyTable(t *testing.T) *Table {
	tb := mustCreate(t, New(), "a", "c", "m")
	tb = mustCreate(t, tb, "b", "m", "")
	tb, err := tb.Move("a", []NodeID{"n4", "n5", "n6"})
	if err != nil {
		t.Fatal(err)
	}
	if tb, err = tb.Apply(Step{AddNonVoter, 1, "n4"}); err != nil {
		t.Fatal(err)
	}
	if tb, _, err = tb.BeginCreate("c", k(""), k("b"), three); err != nil {
		t.Fatal(err)
	}
	if tb, _, err = tb.BeginMerge("b"); err != nil {
		t.Fatal(err)
	}
	if err := tb.Validate(); err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestMarshalRoundTrip(t *testing.T) {
	for name, tb := range map[string]*Table{"new": New(), "busy": busyTable(t)} {
		t.Run(name, func(t *testing.T) {
			data := tb.Marshal()
			if data[0] != formatVersion {
				t.Fatalf("first byte %d", data[0])
			}
			got, err := Unmarshal(data)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Marshal(), data) {
				t.Error("a decoded table encodes differently")
			}
			if layout(got) != layout(tb) || len(got.Transfers) != len(tb.Transfers) || got.Version != tb.Version {
				t.Errorf("decoded %s v%d, want %s v%d", layout(got), got.Version, layout(tb), tb.Version)
			}
			for i, g := range tb.Groups {
				h := got.Groups[i]
				if h.Name != g.Name || h.Epoch != g.Epoch || len(h.Voters) != len(g.Voters) || len(h.NonVoters) != len(g.NonVoters) || (h.Target == nil) != (g.Target == nil) {
					t.Errorf("group %d decoded as %+v, was %+v", g.ID, h, g)
				}
			}
		})
	}
}

func TestUnmarshalRefuses(t *testing.T) {
	data := busyTable(t).Marshal()
	if _, err := Unmarshal(append([]byte{2}, data[1:]...)); !errors.Is(err, ErrFormatVersion) {
		t.Errorf("version 2: %v", err)
	}
	if _, err := Unmarshal(append(bytes.Clone(data), 0)); !errors.Is(err, ErrInvalid) {
		t.Errorf("trailing byte: %v", err)
	}
	for n := range len(data) {
		if _, err := Unmarshal(data[:n]); err == nil {
			t.Fatalf("the first %d of %d bytes decoded", n, len(data))
		}
	}
	// A table that decodes but breaks an invariant.
	bad := New()
	bad.Spans[0].Start = k("a")
	if _, err := Unmarshal(bad.Marshal()); !errors.Is(err, ErrInvalid) {
		t.Errorf("invalid table: %v", err)
	}
}

// FuzzUnmarshal: no input panics or allocates without bound; what decodes
// is valid and encodes to bytes that decode to the same table.
func FuzzUnmarshal(f *testing.F) {
	f.Add(New().Marshal())
	tb := New()
	tb, _, _ = tb.Create("a", k("c"), k("m"), three)
	tb, _, _ = tb.BeginMerge("a")
	f.Add(tb.Marshal())
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		tb, err := Unmarshal(data)
		if err != nil {
			return
		}
		if err := tb.Validate(); err != nil {
			t.Fatalf("decoded an invalid table: %v", err)
		}
		again, err := Unmarshal(tb.Marshal())
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !bytes.Equal(again.Marshal(), tb.Marshal()) {
			t.Fatal("re-encoding changed the table")
		}
		tb.Lookup(data)
	})
}
