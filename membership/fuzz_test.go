package membership

import (
	"strings"
	"testing"
)

// FuzzDecodeMeta decodes arbitrary bytes as a peer's gossip metadata: no
// panic, and a Meta that decodes and that this node could send encodes to
// bytes that decode to the same Meta.
func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{
		{ID: "n1", Addr: "10.0.0.1:7379", BootstrapExpect: 3, ClusterID: strings.Repeat("a", 32)},
		{ID: "n2", Addr: "[::1]:7379", Leaving: true, HasRaftState: true},
		{},
	} {
		b, err := encodeMeta(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(append(b, 0xff, 0x01)) // a later version's fields
	}
	f.Add([]byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			return
		}
		if m.BootstrapExpect < 0 {
			t.Fatalf("bootstrap-expect %d", m.BootstrapExpect)
		}
		enc, err := encodeMeta(m)
		if err != nil {
			return // too big for memberlist: never sent as is
		}
		m2, err := decodeMeta(enc)
		if err != nil || m2 != m {
			t.Fatalf("round trip: %+v became %+v (%v)", m, m2, err)
		}
	})
}
