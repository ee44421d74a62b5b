package consensus

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// DialFunc opens a raft connection to the node at address: a connection to
// its shared port that the port hands to raft (the node writes the routing
// byte and its handshake first).
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// StreamLayer carries raft over the node's shared port: it accepts from the
// demux's raft listener and dials with the node's DialFunc.
type StreamLayer struct {
	net.Listener
	advertise net.Addr
	dial      DialFunc
}

var _ raft.StreamLayer = (*StreamLayer)(nil)

// NewStreamLayer returns a stream layer over ln (raft connections, routed
// and handshaken by the demux). advertise is the address other nodes dial,
// never a wildcard.
func NewStreamLayer(ln net.Listener, advertise net.Addr, dial DialFunc) *StreamLayer {
	return &StreamLayer{Listener: ln, advertise: advertise, dial: dial}
}

// Addr is the advertised address: raft puts it in its messages.
func (s *StreamLayer) Addr() net.Addr { return s.advertise }

// Dial opens a raft connection to a node.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := s.dial(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	return conn, nil
}
