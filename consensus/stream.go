package consensus

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// RaftByte is the first byte of every raft connection on the node's shared
// port: the listener's demux routes on it.
const RaftByte byte = 0x01

// DialFunc opens a TCP connection; tests swap it to cut links.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// StreamLayer carries raft over the node's shared port: it accepts from the
// demux's raft listener and dials other nodes, announcing itself with
// RaftByte.
type StreamLayer struct {
	net.Listener
	advertise net.Addr
	dial      DialFunc
}

var _ raft.StreamLayer = (*StreamLayer)(nil)

// NewStreamLayer returns a stream layer over ln (connections whose first
// byte was RaftByte, already consumed). advertise is the address other nodes
// dial, never a wildcard. A nil dial uses net.Dialer.
func NewStreamLayer(ln net.Listener, advertise net.Addr, dial DialFunc) *StreamLayer {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	return &StreamLayer{Listener: ln, advertise: advertise, dial: dial}
}

// Addr is the advertised address: raft puts it in its messages.
func (s *StreamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to a node's shared port and selects raft.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := s.dial(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte{RaftByte}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	conn.SetWriteDeadline(time.Time{})
	return conn, nil
}
