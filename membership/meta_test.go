package membership

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestMetaRoundTrip(t *testing.T) {
	t.Parallel()
	for _, m := range []Meta{
		{ID: "n1"},
		{ID: "node-7f3a", Addr: "10.0.0.5:7379", BootstrapExpect: 3},
		{ID: "x", Addr: "[2001:db8::1]:7379", Leaving: true, BootstrapExpect: 5, HasRaftState: true},
		{ID: "y", Addr: "kv-0.kv.default.svc.cluster.local:7379", HasRaftState: true},
		{ID: "z", Addr: "10.0.0.6:7379", HasRaftState: true, ClusterID: "0123456789abcdef0123456789abcdef"},
	} {
		buf, err := encodeMeta(m)
		if err != nil {
			t.Fatalf("encode %+v: %v", m, err)
		}
		if len(buf) > 100 {
			t.Errorf("encoded %+v takes %d bytes; keep it compact", m, len(buf))
		}
		got, err := decodeMeta(buf)
		if err != nil || got != m {
			t.Errorf("decode(encode(%+v)) = %+v, %v", m, got, err)
		}
	}
}

func TestMetaForwardCompatible(t *testing.T) {
	t.Parallel()
	m := Meta{ID: "n1", Addr: "10.0.0.5:7379", BootstrapExpect: 3, HasRaftState: true}
	buf, err := encodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	// A later version: higher version byte, an unknown flag bit, and an
	// appended field. We read what we know.
	future := append([]byte(nil), buf...)
	future[0] = 2
	future[1] |= 1 << 7
	future = append(future, 3, 'n', 'e', 'w')
	got, err := decodeMeta(future)
	if err != nil || got != m {
		t.Errorf("decode(future) = %+v, %v; want %+v", got, err, m)
	}
}

// TestMetaWithoutClusterID: the meta of a node from before cluster ids
// ends after the address; it decodes with no cluster id.
func TestMetaWithoutClusterID(t *testing.T) {
	t.Parallel()
	m := Meta{ID: "n1", Addr: "10.0.0.5:7379", HasRaftState: true}
	buf, err := encodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	if buf[len(buf)-1] != 0 {
		t.Fatalf("an empty cluster id should encode as one zero byte at the end: %x", buf)
	}
	got, err := decodeMeta(buf[:len(buf)-1])
	if err != nil || got != m {
		t.Errorf("decode(older meta) = %+v, %v; want %+v", got, err, m)
	}
}

func TestMetaRejectsBadInput(t *testing.T) {
	t.Parallel()
	good, _ := encodeMeta(Meta{ID: "n1", Addr: "10.0.0.5:7379"})
	for name, b := range map[string][]byte{
		"empty":                nil,
		"version 0":            {0, 0, 0, 0, 0},
		"flags only":           {1},
		"no expect":            {1, 0},
		"huge expect":          {1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0},
		"truncated id":         {1, 0, 3, 5, 'a'},
		"truncated addr":       good[:len(good)-2],
		"no addr":              {1, 0, 3, 1, 'a'},
		"truncated cluster id": append(append([]byte(nil), good...)[:len(good)-1], 5, 'a'),
	} {
		if m, err := decodeMeta(b); err == nil {
			t.Errorf("%s: decoded %+v", name, m)
		}
	}
	if _, err := encodeMeta(Meta{ID: "a", Addr: strings.Repeat("x", memberlist.MetaMaxSize)}); err == nil {
		t.Error("oversized meta encoded")
	}
	if _, err := encodeMeta(Meta{ID: "a", ClusterID: strings.Repeat("x", 65)}); err == nil {
		t.Error("oversized cluster id encoded")
	}
	if _, err := encodeMeta(Meta{ID: "a", BootstrapExpect: -1}); err == nil {
		t.Error("negative bootstrap-expect encoded")
	}
}

func TestValidateID(t *testing.T) {
	t.Parallel()
	for id, ok := range map[string]bool{
		"n1": true, "7f3a9c2e-0b1d-4c55-9a0e-2d5b8c1f4e6a": true, "kv-0.kv": true,
		"": false, "a b": false, "a\tb": false, "a\x00": false, strings.Repeat("x", 129): false,
	} {
		if err := validateID(id); (err == nil) != ok {
			t.Errorf("validateID(%q) = %v", id, err)
		}
	}
}

func TestStateString(t *testing.T) {
	t.Parallel()
	for s, want := range map[State]string{
		StateAlive: "alive", StateSuspect: "suspect", StateDead: "dead", StateLeft: "left", State(9): "state(9)",
	} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestParseKey(t *testing.T) {
	t.Parallel()
	key := func(n int) []byte { return bytes.Repeat([]byte{0xab}, n) }
	std := func(n int) string { return base64.StdEncoding.EncodeToString(key(n)) }
	for _, tc := range []struct {
		name string
		in   string
		want []byte
		err  string
	}{
		{name: "16", in: std(16), want: key(16)},
		{name: "24", in: std(24), want: key(24)},
		{name: "32", in: std(32), want: key(32)},
		{name: "unpadded", in: base64.RawStdEncoding.EncodeToString(key(16)), want: key(16)},
		{name: "whitespace", in: " " + std(32) + "\n", want: key(32)},
		{name: "empty", in: "", err: "empty"},
		{name: "not base64", in: "!!!not-base64!!!", err: "not valid base64"},
		{name: "15 bytes", in: std(15), err: "15 bytes: want 16, 24 or 32"},
		{name: "33 bytes", in: std(33), err: "33 bytes: want 16, 24 or 32"},
	} {
		got, err := ParseKey(tc.in)
		switch {
		case tc.err == "" && (err != nil || !bytes.Equal(got, tc.want)):
			t.Errorf("%s: ParseKey = %x, %v; want %x", tc.name, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: ParseKey error %v; want one containing %q", tc.name, err, tc.err)
		case err != nil && len(tc.in) > 4 && strings.Contains(err.Error(), strings.TrimSpace(tc.in)):
			t.Errorf("%s: error echoes the key: %v", tc.name, err)
		}
	}
}

func TestMemberlistLogWriter(t *testing.T) {
	t.Parallel()
	logs := newLogCapture()
	var seen []string
	l := newMemberlistLogger(slog.New(logs), func(msg string) bool {
		seen = append(seen, msg)
		return strings.HasPrefix(msg, "handled")
	})
	l.Printf("[ERR] memberlist: Failed to send: boom")
	l.Printf("[WARN] memberlist: Refuting a suspect message (from: b)")
	l.Printf("[INFO] memberlist: Suspect b has failed, no acks received")
	l.Printf("[DEBUG] memberlist: Stream connection from=127.0.0.1:1")
	l.Printf("Err: Could not set the deadline: x")
	l.Printf("[ERR] memberlist: handled elsewhere")
	l.Printf("[ERR] memberlist: Failed fallback TCP ping: timeout 400ms: read tcp: i/o timeout")

	for _, want := range []struct {
		level slog.Level
		msg   string
	}{
		{slog.LevelError, "memberlist: Failed to send: boom"},
		{slog.LevelWarn, "memberlist: Refuting a suspect message (from: b)"},
		{slog.LevelInfo, "memberlist: Suspect b has failed, no acks received"},
		{slog.LevelInfo, "memberlist: Err: Could not set the deadline: x"},
		{slog.LevelWarn, "memberlist: Failed fallback TCP ping: timeout 400ms"},
	} {
		if rs := logs.find(want.level, want.msg); len(rs) != 1 || rs[0].level != want.level {
			t.Errorf("want one %v record %q, got %v\n%s", want.level, want.msg, rs, logs.String())
		}
	}
	if rs := logs.find(slog.LevelDebug, "Stream connection"); len(rs) != 0 {
		t.Errorf("DEBUG line was logged: %v", rs)
	}
	if rs := logs.find(slog.LevelDebug, "handled elsewhere"); len(rs) != 0 {
		t.Errorf("handled line was logged: %v", rs)
	}
	if len(seen) != 6 {
		t.Errorf("onLine saw %d lines, want 6 (all but DEBUG): %q", len(seen), seen)
	}
}

func TestSuspectFromMemberlistLog(t *testing.T) {
	t.Parallel()
	g := &Gossip{id: "a", members: map[string]*Member{
		"a": {ID: "a", State: StateAlive},
		"b": {ID: "b", State: StateAlive},
		"c": {ID: "c", State: StateDead},
	}, changeCh: make(chan struct{}, 1)}
	state := func(id string) State { return g.members[id].State }

	if g.noteMemberlistLine("Suspect b has failed, no acks received") {
		t.Error("suspect line swallowed")
	}
	g.noteMemberlistLine("Suspect c has failed, no acks received")
	g.noteMemberlistLine("Suspect a has failed, no acks received")
	if state("b") != StateSuspect || state("c") != StateDead || state("a") != StateAlive {
		t.Fatalf("states after suspect lines: a=%v b=%v c=%v", state("a"), state("b"), state("c"))
	}
	select {
	case <-g.changeCh:
	default:
		t.Error("no change signalled")
	}
	g.unsuspect("b")
	if state("b") != StateAlive {
		t.Errorf("b after ack: %v", state("b"))
	}
	if !g.noteMemberlistLine("Conflicting address for b. Mine: 1.2.3.4:5 Theirs: 1.2.3.4:6 Old state: 0") {
		t.Error("memberlist's conflict line not suppressed")
	}
}

func TestLogLimiter(t *testing.T) {
	t.Parallel()
	l := newLogLimiter(time.Hour)
	if !l.allow("x") || l.allow("x") || !l.allow("y") {
		t.Error("limiter let the wrong messages through")
	}
}

// A member that announced its leave and then rejoined, seen by a node that
// never saw it go, counts as seen anew: the reconcile loop adds a removed
// member back only when its Since is after the removal.
func TestRejoinAfterLeaveIsSeenAnew(t *testing.T) {
	t.Parallel()
	g := &Gossip{id: "a", members: map[string]*Member{}, metaErr: map[string]string{}, changeCh: make(chan struct{}, 1), logger: slog.New(slog.DiscardHandler)}
	node := func(leaving bool) *memberlist.Node {
		b, err := encodeMeta(Meta{ID: "b", Addr: "10.0.0.2:7379", Leaving: leaving})
		if err != nil {
			t.Fatal(err)
		}
		return &memberlist.Node{Name: "b", Addr: net.ParseIP("10.0.0.2"), Port: 7379, Meta: b}
	}
	g.update(node(false), StateAlive)
	g.update(node(true), StateAlive)
	leaving := time.Now().Add(-time.Hour)
	g.members["b"].Since = leaving
	g.update(node(false), StateAlive)
	if m := g.members["b"]; m.State != StateAlive || !m.Since.After(leaving) {
		t.Fatalf("b back from leaving: state %v, since %v, not after %v", m.State, m.Since, leaving)
	}
	// An ordinary meta change of a live member is no restart.
	back := g.members["b"].Since
	g.update(node(false), StateAlive)
	if !g.members["b"].Since.Equal(back) {
		t.Fatal("a repeated update moved Since")
	}
}
