package membership

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode"

	"github.com/hashicorp/memberlist"
)

// Meta is what a node tells the others about itself. It travels as
// memberlist node metadata, so it must stay under memberlist.MetaMaxSize
// (512 bytes) once encoded; a typical Meta takes about 50.
type Meta struct {
	// ID is the node id; it is also the memberlist node name.
	ID string
	// Addr is the advertised host:port for raft and the API (the shared
	// port).
	Addr string
	// Leaving is set before a graceful leave, so the others can tell it
	// from a crash: memberlist's own leave notification cannot.
	Leaving bool
	// BootstrapExpect is the node's --bootstrap-expect.
	BootstrapExpect int
	// HasRaftState reports whether the node already has raft state; no
	// bootstrap may happen when any node has.
	HasRaftState bool
	// ClusterID is the id of the cluster the node belongs to; empty while
	// it belongs to none (or to one from before cluster ids). Nodes of
	// different clusters refuse each other's gossip (Config.Admit).
	ClusterID string
}

// Meta encoding. Version 1:
//
//	byte     version (1)
//	byte     flags: bit 0 Leaving, bit 1 HasRaftState
//	uvarint  BootstrapExpect
//	uvarint  len(ID), ID
//	uvarint  len(Addr), Addr
//	uvarint  len(ClusterID), ClusterID   (may be absent: empty)
//
// Later versions only append fields and flag bits. A decoder reads the
// fields it knows and ignores the rest, so nodes of different versions can
// share a cluster during a rolling upgrade.
const (
	metaVersion1 byte = 1

	metaFlagLeaving      byte = 1 << 0
	metaFlagHasRaftState byte = 1 << 1

	// maxIDLen keeps ids printable in logs and leaves room in the meta.
	maxIDLen = 128
	// maxClusterIDLen bounds a cluster id (the node's are 32 hex digits).
	maxClusterIDLen = 64
)

// encodeMeta returns the wire form of m, or an error if it would not fit
// memberlist's metadata limit.
func encodeMeta(m Meta) ([]byte, error) {
	if m.BootstrapExpect < 0 {
		return nil, fmt.Errorf("meta: bootstrap-expect %d is negative", m.BootstrapExpect)
	}
	if len(m.ClusterID) > maxClusterIDLen {
		return nil, fmt.Errorf("meta: cluster id %q is longer than %d bytes", m.ClusterID, maxClusterIDLen)
	}
	buf := make([]byte, 0, 2+4*binary.MaxVarintLen64+len(m.ID)+len(m.Addr)+len(m.ClusterID))
	buf = append(buf, metaVersion1)
	var flags byte
	if m.Leaving {
		flags |= metaFlagLeaving
	}
	if m.HasRaftState {
		flags |= metaFlagHasRaftState
	}
	buf = append(buf, flags)
	buf = binary.AppendUvarint(buf, uint64(m.BootstrapExpect))
	buf = binary.AppendUvarint(buf, uint64(len(m.ID)))
	buf = append(buf, m.ID...)
	buf = binary.AppendUvarint(buf, uint64(len(m.Addr)))
	buf = append(buf, m.Addr...)
	buf = binary.AppendUvarint(buf, uint64(len(m.ClusterID)))
	buf = append(buf, m.ClusterID...)
	if len(buf) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("meta: encoded size %d exceeds memberlist's limit of %d bytes", len(buf), memberlist.MetaMaxSize)
	}
	return buf, nil
}

var errMetaTruncated = errors.New("truncated")

// decodeMeta parses a peer's metadata.
func decodeMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return Meta{}, errors.New("meta: empty")
	}
	if b[0] < metaVersion1 {
		return Meta{}, fmt.Errorf("meta: unknown version %d", b[0])
	}
	if len(b) < 2 {
		return Meta{}, fmt.Errorf("meta: %w", errMetaTruncated)
	}
	m := Meta{
		Leaving:      b[1]&metaFlagLeaving != 0,
		HasRaftState: b[1]&metaFlagHasRaftState != 0,
	}
	rest := b[2:]
	expect, n := binary.Uvarint(rest)
	if n <= 0 || expect > memberlist.MetaMaxSize*8 {
		// No sane cluster expects more voters than that; a huge value is
		// corruption, and int conversion must not overflow.
		return Meta{}, fmt.Errorf("meta: bad bootstrap-expect")
	}
	m.BootstrapExpect = int(expect)
	rest = rest[n:]
	var err error
	if m.ID, rest, err = readString(rest); err != nil {
		return Meta{}, fmt.Errorf("meta: id: %w", err)
	}
	if m.Addr, rest, err = readString(rest); err != nil {
		return Meta{}, fmt.Errorf("meta: addr: %w", err)
	}
	if len(rest) > 0 {
		if m.ClusterID, _, err = readString(rest); err != nil {
			return Meta{}, fmt.Errorf("meta: cluster id: %w", err)
		}
	}
	return m, nil
}

func readString(b []byte) (string, []byte, error) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return "", nil, errMetaTruncated
	}
	end := n + int(l)
	return string(b[n:end]), b[end:], nil
}

// validateID checks a node id before it becomes a memberlist node name. Ids
// appear in log lines (memberlist's and ours), so they must be printable and
// free of spaces.
func validateID(id string) error {
	if id == "" {
		return errors.New("node id is empty")
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("node id %q is longer than %d bytes", id, maxIDLen)
	}
	for _, r := range id {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("node id %q contains spaces or unprintable characters", id)
		}
	}
	return nil
}

// State is a member's gossip state as seen by this node.
type State int

const (
	// StateAlive: the member answers (or nothing says otherwise).
	StateAlive State = iota
	// StateSuspect: this node's own probes of the member failed and
	// memberlist started its suspicion timer; the member is still listed
	// and may refute. memberlist v0.7.0 has no hook for suspicion learned
	// from other nodes, so only locally started suspicion shows here.
	StateSuspect
	// StateDead: the failure detector declared the member dead (a crash or
	// a partition: it did not announce a leave).
	StateDead
	// StateLeft: the member left gracefully (its last meta had Leaving).
	StateLeft
)

// String returns the lower-case name of the state.
func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	default:
		return fmt.Sprintf("state(%d)", int(s))
	}
}

// Member is one node as this node sees it.
type Member struct {
	// ID is the node id (the memberlist node name).
	ID string
	// Addr is the address gossip reaches the member at (ip:port of its
	// shared port). Meta.Addr is what the member itself advertises; they
	// agree unless the member's --advertise is a host name.
	Addr string
	// State is the member's gossip state.
	State State
	// Meta is the member's latest metadata. If it could not be decoded
	// (a peer speaking an unknown format), only Meta.ID is set.
	Meta Meta
	// Since is when this node saw the member enter State; the reconcile
	// loop uses it for "dead longer than --dead-after".
	Since time.Time
}
